"""mdistiller's ImageNet MobileNetV1 (megvii-research/mdistiller `mdistiller/models/imagenet/mobilenetv1.py`,
`MobileNetV1`), transcribed as the tests' reference: the same `model` Sequential of `conv_bn` / `conv_dw` blocks,
`fc`, and `forward(x, is_feat)` computing `feats` by slicing those Sequentials as mdistiller does.

Two changes, both to run it at the tests' sizes: `fc` has `num_classes` outputs (mdistiller: 1000 whatever it is
given), and the pool is global (mdistiller: `AvgPool2d(7)`, whose output `reshape(-1, 1024)` is the global mean
only for 224x224 inputs, where the last map is 7x7).
"""

import torch.nn as nn
import torch.nn.functional as F


def conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


def conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp), nn.ReLU(inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.model = nn.Sequential(
            conv_bn(3, 32, 2), conv_dw(32, 64, 1), conv_dw(64, 128, 2), conv_dw(128, 128, 1),
            conv_dw(128, 256, 2), conv_dw(256, 256, 1), conv_dw(256, 512, 2),
            conv_dw(512, 512, 1), conv_dw(512, 512, 1), conv_dw(512, 512, 1), conv_dw(512, 512, 1),
            conv_dw(512, 512, 1), conv_dw(512, 1024, 2), conv_dw(1024, 1024, 1),
            nn.AdaptiveAvgPool2d(1))  # mdistiller: nn.AvgPool2d(7)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x, is_feat: bool = False):  # (logits, feats) whatever is_feat, as mdistiller's
        feat1 = self.model[3][:-1](self.model[0:3](x))
        feat2 = self.model[5][:-1](self.model[4:5](F.relu(feat1)))
        feat3 = self.model[11][:-1](self.model[6:11](F.relu(feat2)))
        feat4 = self.model[13][:-1](self.model[12:13](F.relu(feat3)))
        avg = self.model[14](F.relu(feat4)).reshape(-1, 1024)
        out = self.fc(avg)
        feats = {"pooled_feat": avg, "feats": [F.relu(feat1), F.relu(feat2), F.relu(feat3), F.relu(feat4)],
                 "preact_feats": [feat1, feat2, feat3, feat4]}
        return out, feats
