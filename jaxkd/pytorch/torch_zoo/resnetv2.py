"""RepDistiller's `ResNet50` (`models/resnetv2.py`), PyTorch reference."""

import torch.nn as nn
import torch.nn.functional as F

from jaxkd.pytorch.torch_zoo import RepDistillerForward, TorchOutput, init_kaiming_fan_out, run_stages
from jaxkd.pytorch.torch_zoo.resnet import Stage


class Bottleneck(nn.Module):
    """1x1 - 3x3 (stride) - 1x1 x4, plus shortcut; returns (output, pre-ReLU sum)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != 4 * planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, 4 * planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact


class ResNet50(RepDistillerForward):
    def __init__(self, num_classes: int = 100, blocks=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for stage, (n, planes, stride) in enumerate(zip(blocks, (64, 128, 256, 512), (1, 2, 2, 2)), start=1):
            layers = []
            for i in range(n):
                layers.append(Bottleneck(in_planes, planes, stride if i == 0 else 1))
                in_planes = 4 * planes
            setattr(self, f"layer{stage}", Stage(*layers))
        self.linear = nn.Linear(in_planes, num_classes)
        init_kaiming_fan_out(self)

    def forward_all(self, x):
        x = stem = F.relu(self.bn1(self.conv1(x)))
        x, features, preacts = run_stages(x, (self.layer1, self.layer2, self.layer3, self.layer4))
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return TorchOutput(stem, features, preacts, pooled, self.linear(pooled))
