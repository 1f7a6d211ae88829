"""PyTorch references of DKD, logit standardization, DIST and ReviewKD, written from the upstream code (not from
jaxkd's): mdistiller's `mdistiller/distillers/DKD.py` (`dkd_loss`, `DKD.forward_train`) and
`mdistiller/distillers/ReviewKD.py` (`ABF`, `hcl_loss`, `ReviewKD.__init__` / `forward_train`),
sunshangquan/logit-standardization-KD's `mdistiller/distillers/KD.py` and `DKD.py` (`normalize`, `kd_loss`,
`dkd_loss(..., logit_stand)`), and hunto/image_classification_sota's `lib/models/losses/dist_kd.py` (`DIST`)."""

import torch
import torch.nn as nn
import torch.nn.functional as F


def standardize(logit: torch.Tensor) -> torch.Tensor:
    """logit-standardization-KD's `normalize`: (z - mean) / (1e-7 + torch.std), the unbiased std."""
    return (logit - logit.mean(dim=-1, keepdim=True)) / (1e-7 + logit.std(dim=-1, keepdim=True))


def kd_loss(student, teacher, temperature: float, logit_stand: bool) -> torch.Tensor:
    """logit-standardization-KD's `kd_loss`: KL(p_t || p_s) summed over classes, batch mean, times T^2."""
    if logit_stand:
        student, teacher = standardize(student), standardize(teacher)
    log_p_s = F.log_softmax(student / temperature, dim=1)
    p_t = F.softmax(teacher / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="none").sum(1).mean() * temperature**2


def dkd_loss(student, teacher, target, alpha: float, beta: float, temperature: float,
             logit_stand: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mdistiller's `dkd_loss` (with the logit-standardization option): (alpha * TCKD + beta * NCKD, TCKD,
    NCKD)."""
    if logit_stand:
        student, teacher = standardize(student), standardize(teacher)
    gt = torch.zeros_like(student).scatter_(1, target.reshape(-1, 1), 1).bool()
    other = torch.ones_like(student).scatter_(1, target.reshape(-1, 1), 0).bool()

    def two_bins(probabilities):
        return torch.cat([(probabilities * gt).sum(1, keepdim=True), (probabilities * other).sum(1, keepdim=True)], 1)

    p_s = two_bins(F.softmax(student / temperature, dim=1))
    p_t = two_bins(F.softmax(teacher / temperature, dim=1))
    batch = target.shape[0]
    tckd = F.kl_div(torch.log(p_s), p_t, reduction="sum") * temperature**2 / batch
    p_t2 = F.softmax(teacher / temperature - 1000.0 * gt, dim=1)
    log_p_s2 = F.log_softmax(student / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_p_s2, p_t2, reduction="sum") * temperature**2 / batch
    return alpha * tckd + beta * nckd, tckd, nckd


def dkd_warmup(epoch: int, warmup: int) -> float:
    """`DKD.forward_train`'s factor on the loss, `min(kwargs["epoch"] / self.warmup, 1.0)`."""
    return min(epoch / warmup, 1.0)


def dist_loss(z_s, z_t, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0):
    """dist_kd.py's `DIST.forward`: (loss, inter, intra) with inter and intra before tau^2."""

    def pearson(a, b, eps=1e-8):
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

    y_s, y_t = (z_s / tau).softmax(dim=1), (z_t / tau).softmax(dim=1)
    inter = 1 - pearson(y_s, y_t).mean()
    intra = 1 - pearson(y_s.transpose(0, 1), y_t.transpose(0, 1)).mean()
    return tau**2 * (beta * inter + gamma * intra), inter, intra


class ABF(nn.Module):
    """mdistiller's `ABF`: 1x1 conv-BN, attention fusion with the upsampled residual, nearest resize to the
    output size, 3x3 conv-BN; convs kaiming_uniform_(a=1), the attention conv PyTorch's default."""

    def __init__(self, in_channel, mid_channel, out_channel, fuse):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channel, mid_channel, 1, bias=False), nn.BatchNorm2d(mid_channel))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channel, out_channel, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channel))
        self.att_conv = nn.Sequential(nn.Conv2d(mid_channel * 2, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x, y=None, shape=None, out_shape=None):
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            y = F.interpolate(y, (shape, shape), mode="nearest")
            z = self.att_conv(torch.cat([x, y], dim=1))
            x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        if x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        return self.conv2(x), x


def hcl_loss(fstudent, fteacher) -> torch.Tensor:
    """mdistiller's `hcl_loss`."""
    total = 0.0
    for fs, ft in zip(fstudent, fteacher):
        h = fs.shape[2]
        loss, cnt, tot = F.mse_loss(fs, ft, reduction="mean"), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= h:
                continue
            cnt /= 2.0
            loss = loss + F.mse_loss(F.adaptive_avg_pool2d(fs, (size, size)),
                                     F.adaptive_avg_pool2d(ft, (size, size)), reduction="mean") * cnt
            tot += cnt
        total = total + loss / tot
    return total


class ReviewKDStudentSide(nn.Module):
    """The trainable part of mdistiller's `ReviewKD` and its loss, with its config's lists as it reads them:
    `in_channels`, `out_channels` shallowest level first (the pooled vector last), `shapes`, `out_shapes`
    deepest first (cfg.py: [64, 128, 256, 256] and [1, 8, 16, 32] for resnet32x4 -> resnet8x4)."""

    def __init__(self, in_channels, out_channels, shapes, out_shapes, max_mid_channel: int = 512):
        super().__init__()
        self.shapes, self.out_shapes = shapes, out_shapes
        mid_channel = min(max_mid_channel, in_channels[-1])
        abfs = nn.ModuleList([ABF(c, mid_channel, out_channels[i], i < len(in_channels) - 1)
                              for i, c in enumerate(in_channels)])
        self.abfs = abfs[::-1]

    def forward(self, student_feats, student_pooled, teacher_preact_feats, teacher_pooled):
        """`student_feats`: the stage outputs (mdistiller's feats[1:], or preact_feats[1:]); the teacher's
        preact_feats[1:]. Returns (the ABF outputs shallowest first, the HCL loss)."""
        x = (list(student_feats) + [student_pooled[:, :, None, None]])[::-1]
        results = []
        out, residual = self.abfs[0](x[0], out_shape=self.out_shapes[0])
        results.append(out)
        for features, abf, shape, out_shape in zip(x[1:], self.abfs[1:], self.shapes[1:], self.out_shapes[1:]):
            out, residual = abf(features, residual, shape, out_shape)
            results.insert(0, out)
        teacher = list(teacher_preact_feats) + [teacher_pooled[:, :, None, None]]
        return results, hcl_loss(results, teacher)

    def jax_variables(self) -> dict:
        """Its ABF weights and BN statistics in jaxkd's ReviewKD variable layout (`abf{i}` = `self.abfs[i]`,
        deepest first; conv weights OIHW -> HWIO), to start both sides from the same weights."""
        as_np = lambda t: t.detach().numpy().copy()  # noqa: E731
        params, stats = {}, {}
        for i, abf in enumerate(self.abfs):
            p = {"conv1": {"kernel": as_np(abf.conv1[0].weight).transpose(2, 3, 1, 0)},
                 "conv2": {"kernel": as_np(abf.conv2[0].weight).transpose(2, 3, 1, 0)}}
            stats[f"abf{i}"] = {}
            for bn, name in ((abf.conv1[1], "bn1"), (abf.conv2[1], "bn2")):
                p[name] = {"scale": as_np(bn.weight), "bias": as_np(bn.bias)}
                stats[f"abf{i}"][name] = {"mean": as_np(bn.running_mean), "var": as_np(bn.running_var)}
            if abf.att_conv is not None:
                p["att_conv"] = {"kernel": as_np(abf.att_conv[0].weight).transpose(2, 3, 1, 0),
                                 "bias": as_np(abf.att_conv[0].bias)}
            params[f"abf{i}"] = p
        return {"params": params, "batch_stats": stats}
