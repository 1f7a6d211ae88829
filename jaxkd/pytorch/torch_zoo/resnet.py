"""RepDistiller's post-activation CIFAR ResNets (`models/resnet.py`), PyTorch reference."""

import torch.nn as nn
import torch.nn.functional as F

from jaxkd.pytorch.torch_zoo import RepDistillerForward, TorchOutput, init_kaiming_fan_out, run_stages


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x)); returns (output, pre-ReLU sum)."""

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        preact = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(preact), preact


class Stage(nn.Sequential):
    """Blocks in sequence; returns (last output, last pre-ReLU sum)."""

    def forward(self, x):
        for block in self:
            x, preact = block(x)
        return x, preact


class ResNet(RepDistillerForward):
    def __init__(self, depth: int, filters, num_classes: int = 100):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        inplanes = filters[0]
        for stage, (planes, stride) in enumerate(zip(filters[1:], (1, 2, 2)), start=1):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(inplanes, planes, stride if i == 0 else 1))
                inplanes = planes
            setattr(self, f"layer{stage}", Stage(*blocks))
        self.fc = nn.Linear(inplanes, num_classes)
        init_kaiming_fan_out(self)

    def forward_all(self, x):
        x = stem = F.relu(self.bn1(self.conv1(x)))
        x, features, preacts = run_stages(x, (self.layer1, self.layer2, self.layer3))
        pooled = F.avg_pool2d(x, 8).flatten(1)
        return TorchOutput(stem, features, preacts, pooled, self.fc(pooled))
