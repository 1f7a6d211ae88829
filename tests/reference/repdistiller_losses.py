"""PyTorch references of FitNets' and AT's losses, written from RepDistiller's `distiller_zoo/FitNet.py`,
`distiller_zoo/AT.py` and `models/util.py` `ConvReg`, not from jaxkd's code.
Test-only. Tensors are NCHW, as in PyTorch.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvReg(nn.Module):
    """RepDistiller's regressor: conv (chosen by the shapes) -> BatchNorm2d -> ReLU, every conv with a bias and
    PyTorch's default init. Unsupported shapes raise ValueError here (RepDistiller raises `NotImplemented`,
    which itself fails with a TypeError)."""

    def __init__(self, s_shape, t_shape, use_relu: bool = True):
        super().__init__()
        self.use_relu = use_relu
        _, s_c, s_h, s_w = s_shape
        _, t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ValueError(f"student size {s_h}, teacher size {t_h}")
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.relu(x) if self.use_relu else x


class HintLoss(nn.Module):
    """FitNets: `nn.MSELoss()` between the regressed student feature and the teacher feature."""

    def __init__(self):
        super().__init__()
        self.crit = nn.MSELoss()

    def forward(self, f_s, f_t):
        return self.crit(f_s, f_t)


class Attention(nn.Module):
    """AT with p = 2: one loss per feature pair; the caller sums them."""

    def __init__(self, p: int = 2):
        super().__init__()
        self.p = p

    def forward(self, g_s, g_t):
        return [self.at_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    def at_loss(self, f_s, f_t):
        s_h, t_h = f_s.shape[2], f_t.shape[2]
        if s_h > t_h:
            f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
        elif s_h < t_h:
            f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
        return (self.at(f_s) - self.at(f_t)).pow(2).mean()

    def at(self, f):
        return F.normalize(f.pow(self.p).mean(1).view(f.size(0), -1))
