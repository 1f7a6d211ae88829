"""PyTorch reference of DML's losses, the PyTorch-reference variant, written from chxy95/Deep-Mutual-Learning
`trainer.py` (and AberHu/Knowledge-Distillation-Zoo `kd_losses/dml.py` for K = 2), not from jaxkd's code.
Test-only.

Every peer's logits come from one forward; peer i's loss is
    L_i = CE(z_i, y) + 1/(K-1) * sum_{j != i} KLDivLoss(batchmean)(log_softmax(z_i), softmax(z_j)),
with the peer's softmax detached (chxy95 wraps it in `Variable(...)`, which carries no gradient) and T = 1.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def dml_losses(logits: list, labels: torch.Tensor) -> list:
    """[L_0, ..., L_{K-1}] for the K peers' logits (each (B, C)) and integer labels (B,)."""
    num_peers = len(logits)
    if num_peers < 2:
        raise ValueError("DML needs at least two peers")
    cross_entropy = nn.CrossEntropyLoss()
    kl_divergence = nn.KLDivLoss(reduction="batchmean")
    losses = []
    for i in range(num_peers):
        ce = cross_entropy(logits[i], labels)
        kl = 0
        for j in range(num_peers):
            if j != i:
                target = F.softmax(logits[j], dim=1).detach()
                kl = kl + kl_divergence(F.log_softmax(logits[i], dim=1), target)
        losses.append(ce + kl / (num_peers - 1))
    return losses
