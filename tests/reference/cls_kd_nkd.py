"""PyTorch reference of NKD, written from the authors' code (not from jaxkd's): yzd-v/cls_KD (branch 1.0, commit
1e5d48f) `mmcls/models/dis_losses/nkd.py` `NKDLoss.forward`, with the target mask as fixed there in ad4876f
(`scatter_(1, label, 0)`: the target column removed before the non-target softmaxes)."""

import torch
import torch.nn.functional as F


def nkd_loss(logit_s: torch.Tensor, logit_t: torch.Tensor, gt_label: torch.Tensor, temp: float, gamma: float):
    """`NKDLoss(temp, gamma)(logit_s, logit_t, gt_label)`: (loss, target part, non-target part). A 2-D `gt_label`
    (a mixed, soft label) is reduced to its argmax, as there."""
    if gt_label.dim() > 1:
        label = torch.max(gt_label, dim=1, keepdim=True)[1]
    else:
        label = gt_label.view(-1, 1)
    n = logit_s.shape[0]
    log_s = F.log_softmax(logit_s, dim=1)
    p_t = F.softmax(logit_t, dim=1)
    s_target = torch.gather(log_s, 1, label)
    t_target = torch.gather(p_t, 1, label).detach()
    loss_t = -(t_target * s_target).mean()

    keep = torch.ones_like(logit_s).scatter_(1, label, 0).bool()
    others_s = logit_s[keep].reshape(n, -1)
    others_t = logit_t[keep].reshape(n, -1)
    log_s_others = F.log_softmax(others_s / temp, dim=1)
    p_t_others = F.softmax(others_t / temp, dim=1)
    loss_non = -gamma * temp**2 * (p_t_others * log_s_others).sum(dim=1).mean()
    return loss_t + loss_non, loss_t, loss_non
