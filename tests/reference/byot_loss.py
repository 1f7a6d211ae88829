"""PyTorch reference of BYOT's shallow heads and loss, written from BYOT-U (luanyunteng/pytorch-be-your-own-teacher:
`models/resnet.py` `branchBottleNeck`, `middle_fc`; `train.py` `kd_loss_function`, `feature_loss_function` and the
total loss), not from jaxkd's code. Test-only; tensors are NCHW.

Adapted to the 3-stage family as docs/methods.md ("What each term is": BYOT) says: heads on stages 1 and 2 with
k = 4 and 2, 64k/4 bottleneck channels and 64k output channels; the deepest classifier is the network's own.
"""

import torch
import torch.nn as nn


def branch_bottleneck(channel_in: int, channel_out: int, kernel_size: int) -> nn.Sequential:
    """BYOT-U's `branchBottleNeck`: 1x1 -> BN -> ReLU -> k x k stride k -> BN -> ReLU -> 1x1 -> BN -> ReLU,
    every conv with a bias (Sequential indices 0, 1, 3, 4, 6, 7 hold the parameters)."""
    middle = channel_out // 4
    return nn.Sequential(
        nn.Conv2d(channel_in, middle, kernel_size=1, stride=1), nn.BatchNorm2d(middle), nn.ReLU(),
        nn.Conv2d(middle, middle, kernel_size=kernel_size, stride=kernel_size), nn.BatchNorm2d(middle), nn.ReLU(),
        nn.Conv2d(middle, channel_out, kernel_size=1, stride=1), nn.BatchNorm2d(channel_out), nn.ReLU())


class ShallowHead(nn.Module):
    """`bottleneck{s}_1` -> `avgpool{s}` (AdaptiveAvgPool2d(1)) -> flatten -> `middle_fc{s}`; returns
    (logits, feature (B, C, 1, 1)) as BYOT-U's forward does. Init as BYOT-U: conv weights kaiming_normal
    (fan_out, relu), BN 1/0, Linear default."""

    def __init__(self, channel_in: int, channel_out: int, kernel_size: int, num_classes: int):
        super().__init__()
        self.bottleneck = branch_bottleneck(channel_in, channel_out, kernel_size)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.middle_fc = nn.Linear(channel_out, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        feature = self.avgpool(self.bottleneck(x))
        return self.middle_fc(torch.flatten(feature, 1)), feature


def kd_loss_function(output, target_output, temperature):
    """target_output: the deepest logits already divided by T and softmaxed (and detached by the caller)."""
    output_log_softmax = torch.log_softmax(output / temperature, dim=1)
    return -torch.mean(torch.sum(output_log_softmax * target_output, dim=1))


def feature_loss_function(fea, target_fea):
    loss = (fea - target_fea) ** 2 * ((fea > 0) | (target_fea > 0)).float()
    return torch.abs(loss).sum()


def byot_total_loss(deepest_logits, deepest_feature, head_outputs, target, alpha=0.1, temperature=3, beta=1e-6):
    """BYOT-U's total loss with the 3rd head left out: (1 - alpha) * (CE of every classifier) + alpha * sum of
    T^2 * soft-CE to the detached deepest softmax + beta * sum of masked summed squared feature distances.
    `head_outputs` = [(logits, feature)] of the shallow heads; `deepest_feature` (B, C) or (B, C, 1, 1)."""
    criterion = nn.CrossEntropyLoss()
    deepest_feature = deepest_feature.reshape(deepest_feature.shape[0], -1, 1, 1)
    soft_target = torch.softmax(deepest_logits / temperature, dim=1).detach()
    ce = criterion(deepest_logits, target)
    kd, feature = 0, 0
    for logits, fea in head_outputs:
        ce = ce + criterion(logits, target)
        kd = kd + kd_loss_function(logits, soft_target, temperature) * temperature ** 2
        feature = feature + feature_loss_function(fea, deepest_feature.detach())
    return (1 - alpha) * ce + alpha * kd + beta * feature
