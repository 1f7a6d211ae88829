"""PyTorch reference of RepDistiller's KDSVD term, written from HobbitLong/RepDistiller `distiller_zoo/KDSVD.py`
(`KDSVD.forward`, `KDSVD.svd`, `KDSVD.removenan`, `KDSVD.align_rsv`), not from jaxkd's code. Test-only; features
NCHW with square maps (its `svd` views a map as (C, H*H)).

`teacher_sign` chooses the one thing `torch.svd` leaves open: "torch" keeps the signs it returns (RepDistiller as
it runs, on this machine's LAPACK); "largest_positive" flips each teacher vector, right after the teacher's SVD,
so that its largest-magnitude component is positive (the deterministic rule jaxkd documents)."""

import torch
import torch.nn.functional as F


def removenan(x):
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def svd(feat, n):
    """(normalized first n singular values, normalized first n right singular vectors) of each example's
    (H*W, C) matrix."""
    b, c, h, _ = feat.shape
    x = feat.reshape(b, c, h * h).transpose(-2, -1)
    _, s, v = torch.svd(x)
    s, v = removenan(s), removenan(v)
    return F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def with_largest_positive(v):
    largest = v.gather(1, v.abs().argmax(dim=1, keepdim=True))
    return v * torch.where(largest < 0, -1.0, 1.0).to(v.dtype)


def align_rsv(a, b):
    """Of a's columns, the one with the largest |cos| to b, times the sign of that cosine."""
    cosine = a.transpose(-2, -1) @ b
    max_abs_cosine = cosine.abs().max(dim=1, keepdim=True)[0]
    return a @ torch.where(max_abs_cosine == cosine.abs(), torch.sign(cosine), torch.zeros_like(cosine))


def kdsvd_losses(g_s, g_t, k=1, teacher_sign="largest_positive"):
    """KDSVD(k).forward: one loss per pair of consecutive stages."""
    losses, v_sb, v_tb = [], None, None
    for i, (f_s, f_t) in enumerate(zip(g_s, g_t)):
        s_t, v_t = svd(f_t, k)
        _, v_s = svd(f_s, k + 3)
        if teacher_sign == "largest_positive":
            v_t = with_largest_positive(v_t)
        v_s = align_rsv(v_s, v_t)
        s_t = s_t.unsqueeze(1)
        v_t, v_s = v_t * s_t, v_s * s_t
        if i > 0:
            s_rbf = torch.exp(-(v_s.unsqueeze(2) - v_sb.unsqueeze(1)).pow(2) / 8)
            t_rbf = torch.exp(-(v_t.unsqueeze(2) - v_tb.unsqueeze(1)).pow(2) / 8)
            l2loss = (s_rbf - t_rbf.detach()).pow(2)
            losses.append(removenan(l2loss).sum())
        v_tb, v_sb = v_t, v_s
    return [loss / g_s[0].shape[0] for loss in losses]
