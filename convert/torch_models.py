"""PyTorch reference implementation of the seed's model family, in the released checkpoints' exact layout.

Written from METHODS.md section 10.2 (pytorch-kd `models/resnet.py`): `ResNet(n, k)` with a 3x3 stem `layer0`,
stages `layer1..3` of n pre-activation `BasicBlock`s (16k, 32k, 64k channels; strides 1, 2, 2), `finalact`
(BN, ReLU), adaptive average pooling and `linear`. Its `state_dict()` keys are those of the released `.pth`
files. It is the independent reference for the parity tests, for `python -m convert export --verify`, and for
the PyTorch side of benchmarks.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from jaxkd.models import ARCHITECTURES, canonical_name


class BasicBlock(nn.Module):
    """Pre-activation block: o = relu(bn1(x)); out = conv2(relu(bn2(conv1(o)))) + (shortcut(o) or x)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x):
        o = F.relu(self.bn1(x))
        shortcut = self.shortcut(o) if self.shortcut is not None else x
        return self.conv2(F.relu(self.bn2(self.conv1(o)))) + shortcut


class ResNet(nn.Module):
    """`forward(x_nchw)` returns `([layer1, layer2, layer3], logits)` like the seed."""

    def __init__(self, blocks_per_stage: int, width: int, num_classes: int = 100):
        super().__init__()
        filters = [16, 32, 64]
        self.layer0 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        in_planes = 16
        stages = []
        for channels, stride in zip(filters, (1, 2, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, channels * width, stride if i == 0 else 1))
                in_planes = channels * width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.finalact = nn.Sequential(nn.BatchNorm2d(in_planes), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_with_pooled(self, x):
        """`(features, pooled, logits)`, pooled being the penultimate vector after the final BN-ReLU."""
        out = self.layer0(x)
        f1 = self.layer1(out)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        pooled = torch.flatten(self.avgpool(self.finalact(f3)), 1)
        return [f1, f2, f3], pooled, self.linear(pooled)

    def forward(self, x):
        features, _, logits = self.forward_with_pooled(x)
        return features, logits


def get_torch_model(name: str, num_classes: int = 100) -> ResNet:
    """The PyTorch reference model for architecture `name` (same names and aliases as `jaxkd.models`)."""
    blocks_per_stage, width = ARCHITECTURES[canonical_name(name)]
    return ResNet(blocks_per_stage, width, num_classes)
