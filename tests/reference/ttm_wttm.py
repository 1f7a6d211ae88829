"""PyTorch reference of WTTM, written from the authors' code (not from jaxkd's): zkxufo/TTM (commit fe457b3)
`distiller_zoo/wttm.py` `WTTM.forward` (and `distiller_zoo/ttm.py` `TTM.forward`, the same without the weight)."""

import torch
import torch.nn.functional as F


def wttm_loss(y_s: torch.Tensor, y_t: torch.Tensor, l: float, weighted: bool = True):
    """`WTTM(l)(y_s, y_t)` (`TTM(l)` when not `weighted`): (loss, per-example power sums, per-example KLs)."""
    log_p_s = F.log_softmax(y_s, dim=1)
    powered = torch.pow(torch.softmax(y_t, dim=1), l)
    norm = torch.sum(powered, dim=1)
    p_t = powered / norm.unsqueeze(1)
    kl = torch.sum(F.kl_div(log_p_s, p_t, reduction="none"), dim=1)
    loss = torch.mean(norm * kl) if weighted else torch.mean(kl)
    return loss, norm, kl
