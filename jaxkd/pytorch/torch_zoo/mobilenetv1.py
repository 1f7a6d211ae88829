"""mdistiller's ImageNet MobileNetV1 (`mdistiller/models/imagenet/mobilenetv1.py`), PyTorch reference with its
module names (`model.{i}` Sequentials, `fc`), with `num_classes` outputs and a global average pool as
`jaxkd.models.mobilenetv1` (mdistiller: 1000 classes, `AvgPool2d(7)`, 224x224 inputs only)."""

import torch.nn as nn
import torch.nn.functional as F

from jaxkd.pytorch.torch_zoo import TorchOutput

STEM_CHANNELS = 32
LAYERS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]
STAGE_ENDS = (3, 5, 11, 13)  # mdistiller's feat1..feat4: the outputs of model.3, .5, .11, .13


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(3, STEM_CHANNELS, 3, 2, 1, bias=False), nn.BatchNorm2d(STEM_CHANNELS),
                                nn.ReLU())]
        inp = STEM_CHANNELS
        for oup, stride in LAYERS:
            layers.append(nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp), nn.ReLU(),
                nn.Conv2d(inp, oup, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU()))
            inp = oup
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(inp, num_classes)

    def forward_all(self, x) -> TorchOutput:
        features, preacts = [], []
        for index, layer in enumerate(self.model):
            preact = layer[:-1](x)
            x = F.relu(preact)
            if index == 0:
                stem = x
            if index in STAGE_ENDS:
                features.append(x)
                preacts.append(preact)
        pooled = x.mean((2, 3))
        return TorchOutput(stem, features, preacts, pooled, self.fc(pooled))

    def forward(self, x):
        return self.forward_all(x).logits
