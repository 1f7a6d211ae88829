"""torchvision's MobileNetV2 (`torchvision/models/mobilenetv2.py`), PyTorch reference with torchvision's module
names (its files load strictly). tests/test_convert_imagenet.py checks it against torchvision's own class."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from jaxkd.pytorch.torch_zoo import TorchOutput

SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1)]  # (expansion, channels, blocks, first stride)
STAGE_ENDS = (3, 6, 13, 17)  # `features` indices of the stage outputs exposed (strides 4, 8, 16, 32)


def round_channels(value: float, divisor: int = 8) -> int:
    """torchvision's `_make_divisible`: the nearest multiple of 8, at least 8, not below 90% of `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_relu6(inp: int, oup: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(oup), nn.ReLU6())


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expansion: int):
        super().__init__()
        hidden = int(round(inp * expansion))
        self.residual = stride == 1 and inp == oup
        layers = [conv_bn_relu6(inp, hidden, 1)] if expansion != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, oup, 1, bias=False),
                   nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's `MobileNetV2(num_classes, width_mult, dropout=0.2)`; `forward(x)` returns the logits."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        channels = round_channels(32 * width_mult)
        layers = [conv_bn_relu6(3, channels, 3, 2)]
        for t, c, n, s in SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(channels, round_channels(c * width_mult), s if i == 0 else 1, t))
                channels = round_channels(c * width_mult)
        last = round_channels(1280 * max(1.0, width_mult))
        layers.append(conv_bn_relu6(channels, last, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward_all(self, x) -> TorchOutput:
        features = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index == 0:
                stem = x
            if index in STAGE_ENDS:
                features.append(x)
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return TorchOutput(stem, features, list(features), pooled, self.classifier(pooled))

    def forward(self, x):
        return self.forward_all(x).logits
