"""torchvision's ResNets (`torchvision/models/resnet.py`: resnet18 ... resnet152, wide_resnet50_2), PyTorch
reference with torchvision's module names, so that its `state_dict()` keys are those of torchvision's files
(`resnet34-b627a593.pth`) and they load strictly. Written here because torchvision's wheel does not import beside
the CPU build of torch; tests/test_convert_imagenet.py checks it against torchvision's own classes."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from jaxkd.pytorch.torch_zoo import TorchOutput


def _downsample(inplanes: int, channels: int, stride: int):
    if stride == 1 and inplanes == channels:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, width_per_group: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(inplanes, planes, stride)

    def forward(self, x):
        """(output, pre-ReLU residual sum)."""
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        preact = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(preact), preact


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, width_per_group: int = 64):
        super().__init__()
        width = planes * width_per_group // 64
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # the stride on the 3x3 (v1.5)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = _downsample(inplanes, planes * 4, stride)

    def forward(self, x):
        """(output, pre-ReLU residual sum)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + (x if self.downsample is None else self.downsample(x))
        return F.relu(preact), preact


class ResNet(nn.Module):
    """torchvision's `ResNet(block, layers, num_classes, width_per_group)`; `forward(x)` returns the logits."""

    def __init__(self, block: str, layers, width_per_group: int = 64, num_classes: int = 1000):
        super().__init__()
        block = BasicBlock if block == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for stage, (blocks, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
            stage_blocks = []
            for i in range(blocks):
                stage_blocks.append(block(inplanes, planes, 2 if stage > 1 and i == 0 else 1, width_per_group))
                inplanes = planes * block.expansion
            setattr(self, f"layer{stage}", nn.ModuleList(stage_blocks))
        self.fc = nn.Linear(inplanes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_all(self, x) -> TorchOutput:
        """stem (before the max pool), the four stage outputs and their pre-ReLU sums, pooled vector, logits."""
        x = stem = F.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        features, preacts = [], []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x, preact = block(x)
            features.append(x)
            preacts.append(preact)
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return TorchOutput(stem, features, preacts, pooled, self.fc(pooled))

    def forward(self, x):
        return self.forward_all(x).logits
