"""PyTorch reference implementations: the seed's model family here, RepDistiller's others in `jaxkd.pytorch.torch_zoo`.

Written from pytorch-kd's `models/resnet.py` (cj-mclaughlin/pytorch-kd): `ResNet(n, k)` with a 3x3 stem `layer0`,
stages `layer1..3` of n pre-activation `BasicBlock`s (16k, 32k, 64k channels; strides 1, 2, 2), `finalact`
(BN, ReLU), adaptive average pooling and `linear`. Its `state_dict()` keys are those of the released `.pth`
files. It is the independent reference for the parity tests, for `python -m convert export --verify`, and for
the PyTorch side of benchmarks. `get_torch_model` builds any architecture `jaxkd.models.get_model` knows.
"""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from jaxkd.models import ARCHITECTURES, canonical_name
from jaxkd.pytorch.torch_zoo import TorchOutput
from jaxkd.pytorch.torch_zoo.mobilenetv1 import MobileNetV1
from jaxkd.pytorch.torch_zoo.mobilenetv2 import MobileNetV2
from jaxkd.pytorch.torch_zoo.resnet import ResNet as PostActResNet
from jaxkd.pytorch.torch_zoo.resnetv2 import ResNet50
from jaxkd.pytorch.torch_zoo.shufflenet import ShuffleV1, ShuffleV2
from jaxkd.pytorch.torch_zoo.torchvision_mobilenetv2 import MobileNetV2 as TorchvisionMobileNetV2
from jaxkd.pytorch.torch_zoo.torchvision_resnet import ResNet as TorchvisionResNet
from jaxkd.pytorch.torch_zoo.vgg import VGG

# RepDistiller's `model_dict` beyond its WideResNets (which are the seed's architecture), by jaxkd's names.
REPDISTILLER_MODELS = {
    **{f"rd_resnet{d}": partial(PostActResNet, d, (16, 16, 32, 64)) for d in (8, 14, 20, 32, 44, 56, 110)},
    "rd_resnet8x4": partial(PostActResNet, 8, (32, 64, 128, 256)),
    "rd_resnet32x4": partial(PostActResNet, 32, (32, 64, 128, 256)),
    "ResNet50": ResNet50,
    **{f"vgg{d}": partial(VGG, d) for d in (8, 11, 13, 16, 19)},
    "MobileNetV2": MobileNetV2,
    "ShuffleV1": ShuffleV1,
    "ShuffleV2": ShuffleV2,
}
# The ImageNet architectures (jaxkd's names): torchvision's, with its module names, and mdistiller's MobileNetV1.
IMAGENET_MODELS = {
    "tv_resnet18": partial(TorchvisionResNet, "basic", (2, 2, 2, 2)),
    "tv_resnet34": partial(TorchvisionResNet, "basic", (3, 4, 6, 3)),
    "tv_resnet50": partial(TorchvisionResNet, "bottleneck", (3, 4, 6, 3)),
    "tv_resnet101": partial(TorchvisionResNet, "bottleneck", (3, 4, 23, 3)),
    "tv_resnet152": partial(TorchvisionResNet, "bottleneck", (3, 8, 36, 3)),
    "tv_wide_resnet50_2": partial(TorchvisionResNet, "bottleneck", (3, 4, 6, 3), 128),
    "tv_mobilenet_v2": TorchvisionMobileNetV2,
    "MobileNetV1": MobileNetV1,
}


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
        return self.forward_with_normalized_input(x)[0]

    def forward_with_normalized_input(self, x):
        """(output, bn1(x))."""
        normalized = self.bn1(x)
        o = F.relu(normalized)
        shortcut = self.shortcut(o) if self.shortcut is not None else x
        return self.conv2(F.relu(self.bn2(self.conv1(o)))) + shortcut, normalized


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

    def forward_all(self, x) -> TorchOutput:
        """Every feature of one pass: the stem (layer0's output), the stage outputs, their pre-ReLU versions
        (normalized by the BN that reads them next: the next stage's first bn1, finalact for the last), the
        pooled vector and the logits."""
        x = stem = self.layer0(x)
        features, preacts = [], []
        for stage in (self.layer1, self.layer2, self.layer3):
            for i, block in enumerate(stage):
                x, normalized = block.forward_with_normalized_input(x)
                if i == 0 and stage is not self.layer1:
                    preacts.append(normalized)
            features.append(x)
        preacts.append(self.finalact[0](x))
        pooled = torch.flatten(self.avgpool(F.relu(preacts[-1])), 1)
        return TorchOutput(stem, features, preacts, pooled, self.linear(pooled))

    def forward(self, x):
        features, _, logits = self.forward_with_pooled(x)
        return features, logits


def get_torch_model(name: str, num_classes: int = 100) -> nn.Module:
    """The PyTorch reference model for architecture `name` (same names and aliases as `jaxkd.models`): the
    seed's layout for the seed family (RepDistiller's WideResNets included), torchvision's and mdistiller's for
    the ImageNet ones, RepDistiller's for the others."""
    name = canonical_name(name)
    if name in ARCHITECTURES:
        blocks_per_stage, width = ARCHITECTURES[name]
        return ResNet(blocks_per_stage, width, num_classes)
    if name in IMAGENET_MODELS:
        return IMAGENET_MODELS[name](num_classes=num_classes)
    return REPDISTILLER_MODELS[name](num_classes=num_classes)
