"""PyTorch reference of OFD, written from the upstream code (not from jaxkd's): megvii-research/mdistiller
`mdistiller/distillers/OFD.py` (`feat_loss`, `ConnectorConvBN._build_feature_connector`, `OFD.init_ofd_modules`'s
margin loop, `OFD.ofd_loss`, `OFD._align_list`), the same margin as clovaai/overhaul-distillation
`CIFAR-100/distiller.py` `get_margin_from_BN`, and each CIFAR model's `get_bn_before_relu` in mdistiller's
`mdistiller/models/cifar/` (`resnet.py`, `wrn.py`, `vgg.py`, `mobilenetv2.py`, `resnetv2.py`), applied to the
project's PyTorch models (RepDistiller's module names, which are mdistiller's; the seed's WRN names its
`block2.layer[0].bn1`, `block3.layer[0].bn1`, `bn1` as `layer2[0].bn1`, `layer3[0].bn1`, `finalact[0]`). NCHW."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import norm


def margin_from_bn(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """`get_margin_from_BN`: per channel, in Python floats, returned as a FloatTensor."""
    margin = []
    for s, m in zip(weight, bias):
        s, m = abs(s.item()), m.item()
        if norm.cdf(-m / s) > 0.001:
            margin.append(-s * math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / norm.cdf(-m / s) + m)
        else:
            margin.append(-3 * s)
    return torch.FloatTensor(margin)


def feat_loss(source, target, margin):
    """mdistiller's `feat_loss`, margin (1, C, 1, 1)."""
    margin = margin.to(source)
    loss = ((source - margin) ** 2 * ((source > margin) & (target <= margin)).float()
            + (source - target) ** 2 * ((source > target) & (target > margin) & (target <= 0)).float()
            + (source - target) ** 2 * (target > 0).float())
    return torch.abs(loss).mean(dim=0).sum()


def build_feature_connector(t_channel: int, s_channel: int, kernel_size: int = 1) -> nn.Sequential:
    """`ConnectorConvBN._build_feature_connector`: conv (no bias) N(0, sqrt(2 / (k k t))) + BN 1 / 0."""
    conv = nn.Conv2d(s_channel, t_channel, kernel_size=kernel_size, stride=1, padding=(kernel_size - 1) // 2,
                     bias=False)
    conv.weight.data.normal_(0, math.sqrt(2.0 / (kernel_size * kernel_size * t_channel)))
    bn = nn.BatchNorm2d(t_channel)
    bn.weight.data.fill_(1)
    bn.bias.data.zero_()
    return nn.Sequential(conv, bn)


def align_list(*lists):
    """`OFD._align_list`: each list's last min(lengths) entries."""
    count = min(len(items) for items in lists)
    return [items[-count:] for items in lists]


class OFDReference(nn.Module):
    """`OFD`'s modules and loss for given stage channels (its `get_stage_channels()[1:]`) and teacher BNs."""

    def __init__(self, s_channels, t_channels, bn_before_relu, kernel_size: int = 1):
        super().__init__()
        t_channels, s_channels = align_list(list(t_channels), list(s_channels))
        self.connectors = nn.ModuleList([build_feature_connector(t, s, kernel_size)
                                         for t, s in zip(t_channels, s_channels)])
        self.margins = [margin_from_bn(bn.weight.data, bn.bias.data).reshape(1, -1, 1, 1).detach()
                        for bn in bn_before_relu]

    def ofd_loss(self, feature_student, feature_teacher):
        """`OFD.ofd_loss` (before FEAT_WEIGHT): (total, per-stage losses before their 1 / 2^(n-1-i))."""
        feature_student, feature_teacher = align_list(feature_student, feature_teacher)
        feature_student = [self.connectors[i](f) for i, f in enumerate(feature_student)]
        count, total, stages = len(feature_student), 0, []
        for i in range(count):
            loss = feat_loss(feature_student[i],
                             F.adaptive_avg_pool2d(feature_teacher[i], feature_student[i].shape[-2:]).detach(),
                             self.margins[i])
            stages.append(loss)
            total = total + loss / 2 ** (count - i - 1)
        return total, stages


    def jax_variables(self) -> dict:
        """The connectors in jaxkd's OFD variable layout (`connector{i}_conv`, `connector{i}_bn`; conv weights
        OIHW -> HWIO), to start both sides from the same weights."""
        as_np = lambda t: t.detach().numpy().copy()  # noqa: E731
        params, stats = {}, {}
        for i, (conv, bn) in enumerate(self.connectors):
            params[f"connector{i}_conv"] = {"kernel": as_np(conv.weight).transpose(2, 3, 1, 0)}
            params[f"connector{i}_bn"] = {"scale": as_np(bn.weight), "bias": as_np(bn.bias)}
            stats[f"connector{i}_bn"] = {"mean": as_np(bn.running_mean), "var": as_np(bn.running_var)}
        return {"params": params, "batch_stats": stats}


def bn_before_relu(model: nn.Module, family: str) -> list:
    """mdistiller's `get_bn_before_relu` of each family on the project's PyTorch models."""
    if family == "wrn":  # wrn.py: block2.layer[0].bn1, block3.layer[0].bn1, bn1
        return [model.layer2[0].bn1, model.layer3[0].bn1, model.finalact[0]]
    if family == "resnet":  # resnet.py, BasicBlock: layer{1,2,3}[-1].bn2
        return [model.layer1[-1].bn2, model.layer2[-1].bn2, model.layer3[-1].bn2]
    if family == "resnetv2":  # resnetv2.py, Bottleneck: layer{1..4}[-1].bn3
        return [model.layer1[-1].bn3, model.layer2[-1].bn3, model.layer3[-1].bn3, model.layer4[-1].bn3]
    if family == "vgg":  # vgg.py: block{1..4}[-1]
        return [model.block1[-1], model.block2[-1], model.block3[-1], model.block4[-1]]
    if family == "mobilenetv2":  # mobilenetv2.py: blocks[g][-1].conv[-1], g = 1, 2, 4, 6
        return [model.blocks[g][-1].conv[-1] for g in (1, 2, 4, 6)]
    raise NotImplementedError(family)
