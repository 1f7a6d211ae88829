"""PyTorch references of RepDistiller's SP, CC, VID, RKD, PKT and NST terms, written from its
`distiller_zoo/{SP,CC,VID,RKD,PKT,NST}.py` and `models/util.py` `LinearEmbed`, not from jaxkd's code.
Test-only; tensors NCHW (features) or (B, D) (pooled vectors), as in PyTorch."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def similarity_loss(f_s, f_t):
    """SP: row-normalized batch Gram matrices, squared difference summed, over B^2."""
    b = f_s.shape[0]
    g_s = F.normalize(f_s.reshape(b, -1) @ f_s.reshape(b, -1).t())
    g_t = F.normalize(f_t.reshape(b, -1) @ f_t.reshape(b, -1).t())
    return ((g_t - g_s) ** 2).sum() / (b * b)


class LinearEmbed(nn.Module):
    def __init__(self, dim_in, dim_out=128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return self.linear(x.reshape(x.shape[0], -1))


def correlation_loss(e_s, e_t):
    """CC: |e_s - e_t| of consecutive examples multiplied, summed over features, averaged over the B - 1 pairs."""
    d = (e_s - e_t).abs()
    return (d[:-1] * d[1:]).sum(dim=1).mean()


def match_size(f_s, f_t):
    """VID's and NST's rule: the map with the larger H is adaptive-average-pooled to the other's (H, H)."""
    if f_s.shape[2] > f_t.shape[2]:
        f_s = F.adaptive_avg_pool2d(f_s, (f_t.shape[2], f_t.shape[2]))
    elif f_s.shape[2] < f_t.shape[2]:
        f_t = F.adaptive_avg_pool2d(f_t, (f_s.shape[2], f_s.shape[2]))
    return f_s, f_t


class VIDLoss(nn.Module):
    def __init__(self, c_in, c_mid, c_out, init_pred_var=5.0, eps=1e-5):
        super().__init__()
        self.regressor = nn.Sequential(nn.Conv2d(c_in, c_mid, 1, bias=False), nn.ReLU(),
                                       nn.Conv2d(c_mid, c_mid, 1, bias=False), nn.ReLU(),
                                       nn.Conv2d(c_mid, c_out, 1, bias=False))
        self.log_scale = nn.Parameter(torch.full((c_out,), math.log(math.exp(init_pred_var - eps) - 1.0)))
        self.eps = eps

    def forward(self, f_s, f_t):
        f_s, f_t = match_size(f_s, f_t)
        mean = self.regressor(f_s)
        var = (torch.log(1.0 + torch.exp(self.log_scale)) + self.eps).view(1, -1, 1, 1)
        return (0.5 * ((mean - f_t) ** 2 / var + torch.log(var))).mean()


def _pairwise_distances(e, eps=1e-12):
    sq = (e * e).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps).sqrt().clone()
    idx = torch.arange(len(e))
    d[idx, idx] = 0
    return d


def _angles(e):
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def rkd_losses(f_s, f_t):
    """RKD: (distance loss, angle loss), each smooth-L1 (mean); the teacher's under no_grad."""
    s, t = f_s.reshape(f_s.shape[0], -1), f_t.reshape(f_t.shape[0], -1)
    with torch.no_grad():
        t_d = _pairwise_distances(t)
        t_d = t_d / t_d[t_d > 0].mean()
        t_a = _angles(t)
    d = _pairwise_distances(s)
    d = d / d[d > 0].mean()
    return F.smooth_l1_loss(d, t_d), F.smooth_l1_loss(_angles(s), t_a)


def pkt_loss(f_s, f_t, eps=1e-7):
    def probabilities(x):
        x = x / (x.pow(2).sum(1, keepdim=True).sqrt() + eps)
        x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
        sim = (x @ x.t() + 1.0) / 2.0
        return sim / sim.sum(1, keepdim=True)

    p_s, p_t = probabilities(f_s), probabilities(f_t)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def nst_loss(f_s, f_t):
    f_s, f_t = match_size(f_s, f_t)
    s = F.normalize(f_s.reshape(f_s.shape[0], f_s.shape[1], -1), dim=2)
    t = F.normalize(f_t.reshape(f_t.shape[0], f_t.shape[1], -1), dim=2)

    def kernel_mean(a, b):  # mean over (batch, i, j) of (b_i . a_j)^2
        return (torch.bmm(b, a.transpose(1, 2)) ** 2).mean()

    return kernel_mean(t, t).detach() + kernel_mean(s, s) - 2 * kernel_mean(s, t)
