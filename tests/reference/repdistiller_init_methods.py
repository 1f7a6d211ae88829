"""PyTorch references of RepDistiller's AB, FT and FSP and of its init stage, written from its
`distiller_zoo/{AB,FT,FSP}.py`, `models/util.py` (`Connector`, `Paraphraser`, `Translator`) and
`helper/pretrain.py` `init`, not from jaxkd's code. NCHW tensors, as RepDistiller."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.reference.repdistiller_losses import ConvReg


def ab_losses(g_s, g_t, margin: float = 1.0) -> list:
    """`ABLoss(len(g_s), margin)(g_s, g_t)`: per stage i of n, 2^(i-n+1) * sum |(s+m)^2 [s > -m & t <= 0]
    + (s-m)^2 [s <= m & t > 0]| / B / 1000 * 3."""
    n, batch = len(g_s), g_s[0].shape[0]
    out = []
    for i, (s, t) in enumerate(zip(g_s, g_t)):
        loss = ((s + margin) ** 2 * ((s > -margin) & (t <= 0)).float()
                + (s - margin) ** 2 * ((s <= margin) & (t > 0)).float())
        out.append(2 ** (i - n + 1) * loss.abs().sum() / batch / 1000 * 3)
    return out


class Connector(nn.Module):
    """One entry per stage: the identity where channels and height agree, else ConvReg without its ReLU."""

    def __init__(self, s_shapes, t_shapes):
        super().__init__()
        self.connectors = nn.ModuleList(
            [nn.Sequential() if (s[1], s[2]) == (t[1], t[2]) else ConvReg(s, t, use_relu=False)
             for s, t in zip(s_shapes, t_shapes)])

    def forward(self, g_s):
        return [c(g) for c, g in zip(self.connectors, g_s)]


class Paraphraser(nn.Module):
    """Encoder of three 3x3 convs C->C->kC->kC, decoder of three 3x3 transposed convs kC->kC->C->C (stride 1,
    padding 1), each followed by LeakyReLU(0.1); no BN (RepDistiller's use_bn=False)."""

    def __init__(self, channels: int, k: float = 0.5):
        super().__init__()
        out = int(channels * k)
        act = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        self.encoder = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), act(), nn.Conv2d(channels, out, 3, 1, 1),
                                     act(), nn.Conv2d(out, out, 3, 1, 1), act())
        self.decoder = nn.Sequential(nn.ConvTranspose2d(out, out, 3, 1, 1), act(),
                                     nn.ConvTranspose2d(out, channels, 3, 1, 1), act(),
                                     nn.ConvTranspose2d(channels, channels, 3, 1, 1), act())

    def forward(self, x, is_factor: bool = False):
        factor = self.encoder(x)
        return factor if is_factor else (factor, self.decoder(factor))


class Translator(nn.Module):
    """Three 3x3 convs Cs->Cs->k Ct->k Ct, each followed by BatchNorm2d and LeakyReLU(0.1)."""

    def __init__(self, s_channels: int, t_channels: int, k: float = 0.5):
        super().__init__()
        out = int(t_channels * k)
        layers = []
        for c_in, c_out in ((s_channels, s_channels), (s_channels, out), (out, out)):
            layers += [nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)]
        self.encoder = nn.Sequential(*layers)

    def forward(self, x):
        return self.encoder(x)


def factor_transfer(f_s, f_t, p1: float = 2, p2: float = 1):
    """`FactorTransfer(p1, p2)(f_s, f_t)`."""
    if f_s.shape[2] > f_t.shape[2]:
        f_s = F.adaptive_avg_pool2d(f_s, (f_t.shape[2], f_t.shape[2]))
    elif f_s.shape[2] < f_t.shape[2]:
        f_t = F.adaptive_avg_pool2d(f_t, (f_s.shape[2], f_s.shape[2]))
    factor = lambda f: F.normalize(f.pow(p1).mean(1).view(f.size(0), -1))  # noqa: E731
    difference = factor(f_s) - factor(f_t)
    return difference.abs().mean() if p2 == 1 else difference.pow(p2).mean()


def fsp_losses(g_s, g_t) -> list:
    """`FSP(...)(g_s, g_t)`: per consecutive pair, the mean squared difference of the FSP matrices."""
    def matrices(g):
        out = []
        for bot, top in zip(g[:-1], g[1:]):
            if bot.shape[2] > top.shape[2]:
                bot = F.adaptive_avg_pool2d(bot, (top.shape[2], top.shape[2]))
            elif bot.shape[2] < top.shape[2]:
                top = F.adaptive_avg_pool2d(top, (bot.shape[2], bot.shape[2]))
            b = bot.unsqueeze(1).flatten(3)  # (B, 1, Cb, HW)
            t = top.unsqueeze(2).flatten(3)  # (B, Ct, 1, HW)
            out.append((b * t).mean(-1))
        return out
    return [(s - t).pow(2).mean() for s, t in zip(matrices(g_s), matrices(g_t))]


def init_stage(student, teacher, init_modules: nn.ModuleList, loss_fn, batches, lr: float, momentum: float = 0.9,
               weight_decay: float = 5e-4) -> list:
    """RepDistiller's `init`: student and teacher `.eval()`, then `init_modules.train()` (which may hold some of
    the student's own modules: they go back to train mode), SGD over `init_modules`; for each (images) batch the
    student's and (no_grad) teacher's `forward_all`, `loss_fn(out_s, out_t)`, a step. Returns the losses."""
    teacher.eval()
    student.eval()
    init_modules.train()
    optimizer = torch.optim.SGD(init_modules.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    losses = []
    for images in batches:
        out_s = student.forward_all(images)
        with torch.no_grad():
            out_t = teacher.forward_all(images)
        loss = loss_fn(out_s, out_t)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
