"""PyTorch reference of mdistiller's KDSVD term, written from megvii-research/mdistiller
`mdistiller/distillers/KDSVD.py` (`kdsvd_loss`, `svd`, `removenan`, `align_rsv`; `KDSVD.forward_train` passes
it `feats[1:]`), not from jaxkd's code. Test-only; features NCHW.

Its `svd` views each map as (C*H, W) (RepDistiller's as (H*W, C)) and casts it with `.float()`: `dtype` is that
cast (float32 as upstream; the float64 tests pass float64). `teacher_sign` as in `repdistiller_kdsvd`: "torch"
keeps `torch.svd`'s signs, "largest_positive" flips each teacher vector so that its largest-magnitude component
is positive (jaxkd's rule)."""

import torch
import torch.nn.functional as F


def removenan(x):
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def svd(feat, n, dtype):
    """(normalized first n singular values, normalized first n right singular vectors, (B, W, n)) of each
    example's (C*H, W) matrix."""
    b, c, h, w = feat.shape
    _, s, v = torch.svd(feat.reshape(b, c * h, w).to(dtype))
    s, v = removenan(s), removenan(v)
    return F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def align_rsv(a, b):
    cosine = torch.matmul(a.transpose(-2, -1), b)
    max_abs_cosine, _ = torch.max(torch.abs(cosine), 1, keepdim=True)
    mask = torch.where(torch.eq(max_abs_cosine, torch.abs(cosine)), torch.sign(cosine), torch.zeros_like(cosine))
    return torch.matmul(a, mask)


def kdsvd_losses(g_s, g_t, k=1, teacher_sign="largest_positive", dtype=torch.float32):
    """The terms `kdsvd_loss` sums: one per pair of consecutive stages, each over the batch."""
    v_sb = v_tb = None
    losses = []
    for i, f_s, f_t in zip(range(len(g_s)), g_s, g_t):
        s_t, v_t = svd(f_t, k, dtype)
        _, v_s = svd(f_s, k + 3, dtype)
        if teacher_sign == "largest_positive":
            largest = torch.gather(v_t, 1, torch.argmax(v_t.abs(), dim=1, keepdim=True))
            v_t = torch.where(largest < 0, -v_t, v_t)
        v_s = align_rsv(v_s, v_t)
        s_t = s_t.unsqueeze(1)
        v_t = v_t * s_t
        v_s = v_s * s_t
        if i > 0:
            s_rbf = torch.exp(-(v_s.unsqueeze(2) - v_sb.unsqueeze(1)).pow(2) / 8)
            t_rbf = torch.exp(-(v_t.unsqueeze(2) - v_tb.unsqueeze(1)).pow(2) / 8)
            l2loss = removenan((s_rbf - t_rbf.detach()).pow(2))
            losses.append(l2loss.sum())
        v_tb = v_t
        v_sb = v_s
    return [loss / g_s[0].shape[0] for loss in losses]
