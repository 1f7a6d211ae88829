"""RepDistiller's VGGs with BatchNorm (`models/vgg.py`, `vgg*_bn`), PyTorch reference."""

import torch.nn as nn
import torch.nn.functional as F

from jaxkd.pytorch.torch_zoo import RepDistillerForward, TorchOutput, init_kaiming_fan_out

CONFIGS = {  # channels of each conv, per block
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def make_block(channels, in_channels: int) -> nn.Sequential:
    """[conv, BN, ReLU] per entry, without the last ReLU."""
    layers = []
    for out_channels in channels:
        layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU()]
        in_channels = out_channels
    return nn.Sequential(*layers[:-1])


class VGG(RepDistillerForward):
    def __init__(self, depth: int, num_classes: int = 100):
        super().__init__()
        cfg, in_channels = CONFIGS[depth], 3
        for index, channels in enumerate(cfg):
            setattr(self, f"block{index}", make_block(channels, in_channels))
            in_channels = channels[-1]
        self.classifier = nn.Linear(512, num_classes)
        init_kaiming_fan_out(self, linear_default=False)

    def forward_all(self, x):
        height = x.shape[2]
        x = stem = F.relu(self.block0(x))
        features, preacts = [], []
        for index, block in enumerate((self.block1, self.block2, self.block3, self.block4), start=1):
            if index < 4 or height == 64:
                x = F.max_pool2d(x, 2, 2)
            preact = block(x)
            x = F.relu(preact)
            features.append(x)
            preacts.append(preact)
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return TorchOutput(stem, features, preacts, pooled, self.classifier(pooled))
