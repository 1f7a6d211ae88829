"""RepDistiller's ShuffleV1 and ShuffleV2 (`models/ShuffleNetv1.py`, `models/ShuffleNetv2.py`), PyTorch reference,
at PyTorch's default initialization as there."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from jaxkd.pytorch.torch_zoo import RepDistillerForward, TorchOutput, run_stages
from jaxkd.pytorch.torch_zoo.resnet import Stage


def shuffle(x, groups: int):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class V1Bottleneck(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        mid = out_planes // 4
        self.first_groups = 1 if in_planes == 24 else groups
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x):
        out = shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            preact = torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1)
        else:
            preact = out + x
        return F.relu(preact), preact


class ShuffleV1(RepDistillerForward):
    def __init__(self, num_classes: int = 100, widths=(240, 480, 960), blocks=(4, 8, 4), groups: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        for stage, (width, n) in enumerate(zip(widths, blocks), start=1):
            layers = []
            for i in range(n):
                layers.append(V1Bottleneck(in_planes, width - in_planes if i == 0 else width, 2 if i == 0 else 1,
                                           groups))
                in_planes = width
            setattr(self, f"layer{stage}", Stage(*layers))
        self.linear = nn.Linear(in_planes, num_classes)

    def forward_all(self, x):
        x = stem = F.relu(self.bn1(self.conv1(x)))
        x, features, preacts = run_stages(x, (self.layer1, self.layer2, self.layer3))
        pooled = F.avg_pool2d(x, 4).flatten(1)
        return TorchOutput(stem, features, preacts, pooled, self.linear(pooled))


class V2DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return shuffle(torch.cat([left, right], 1), 2), None


class V2BasicBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x):
        half = x.shape[1] // 2
        x1, x2 = x[:, :half], x[:, half:]
        branch = self.bn3(self.conv3(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))))
        out = shuffle(torch.cat([x1, F.relu(branch)], 1), 2)
        return out, torch.cat([x1, branch], 1)


class ShuffleV2(RepDistillerForward):
    def __init__(self, num_classes: int = 100, widths=(116, 232, 464), blocks=(3, 7, 3), last: int = 1024):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_channels = 24
        for stage, (width, n) in enumerate(zip(widths, blocks), start=1):
            setattr(self, f"layer{stage}", Stage(V2DownBlock(in_channels, width),
                                                 *(V2BasicBlock(width) for _ in range(n))))
            in_channels = width
        self.conv2 = nn.Conv2d(in_channels, last, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(last)
        self.linear = nn.Linear(last, num_classes)

    def forward_all(self, x):
        x = stem = F.relu(self.bn1(self.conv1(x)))
        x, features, preacts = run_stages(x, (self.layer1, self.layer2, self.layer3))
        pooled = F.avg_pool2d(F.relu(self.bn2(self.conv2(x))), 4).flatten(1)
        return TorchOutput(stem, features, preacts, pooled, self.linear(pooled))
