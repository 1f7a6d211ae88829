"""RepDistiller's MobileNetV2 (`models/mobilenetv2.py`, `mobile_half` = T 6, width 0.5), PyTorch reference."""

import torch.nn as nn
import torch.nn.functional as F

from jaxkd.pytorch.torch_zoo import RepDistillerForward, TorchOutput, init_kaiming_fan_out

SETTINGS = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
            (None, 160, 3, 2), (None, 320, 1, 1)]  # (expansion, channels, blocks, first stride)


def conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(oup),
                         nn.ReLU())


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expansion: int):
        super().__init__()
        hidden = inp * expansion
        self.residual = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup))

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(RepDistillerForward):
    def __init__(self, num_classes: int = 100, expansion: int = 6, width: float = 0.5):
        super().__init__()
        channels = int(32 * width)
        self.conv1 = conv_bn_relu(3, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in SETTINGS:
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(channels, int(c * width), s if i == 0 else 1, t or expansion))
                channels = int(c * width)
            self.blocks.append(nn.Sequential(*layers))
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = conv_bn_relu(channels, last, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        init_kaiming_fan_out(self, linear_default=False)

    def forward_all(self, x):
        x = stem = self.conv1(x)
        features = []
        for index, group in enumerate(self.blocks):
            x = group(x)
            if index in (1, 2, 4, 6):
                features.append(x)
        x = self.conv2(x)
        pooled = F.avg_pool2d(x, x.shape[2], ceil_mode=True).flatten(1)
        return TorchOutput(stem, features, list(features), pooled, self.classifier(pooled))
