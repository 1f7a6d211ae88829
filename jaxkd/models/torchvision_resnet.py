"""torchvision's ImageNet ResNets (`torchvision/models/resnet.py`, `ResNet`, `BasicBlock`, `Bottleneck`):
ResNet-18/34/50/101/152 and Wide ResNet-50-2, in Flax, NHWC, with PyTorch's BatchNorm semantics.

A 7x7 stride-2 conv-BN-ReLU stem to 64 channels and a 3x3 stride-2 max pool, four stages of basic blocks
(18, 34) or bottlenecks (50, 101, 152, wide 50-2) with 64, 128, 256, 512 planes (strides 1, 2, 2, 2), global
average pooling (`AdaptiveAvgPool2d(1)`: any input size) and a linear classifier `fc`. The stride sits on the
3x3 conv (torchvision's "ResNet v1.5"); the shortcut is a 1x1 conv + BN (`downsample`) where the stride or width
changes. Wide ResNet-50-2 is ResNet-50 with `width_per_group=128`: twice the inner width of each bottleneck.

`ModelOutput` as mdistiller's `models/imagenet/resnet.py` returns `feats` for these networks (the same
function, with each block's last ReLU moved into the next block): `stem` is relu(bn1(conv1(x))) before the max
pool (its `feats[0]`), `features` the four stage outputs, `preact_features` the last blocks' residual sums
before their ReLU (its `preact_feats[1:]`), `pooled` the classifier's input.

Module paths mirror torchvision's state_dict keys (`layer1.0/downsample.0` is `layer1.0.downsample.0`), so
`convert` maps torchvision's files by the same rule as RepDistiller's. Initialization is torchvision's: convs
kaiming-normal (fan_out), BN 1/0, `fc` PyTorch's default (`zero_init_residual=False`).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxkd.models.output import FeatureModel, ModelOutput, classify
from jaxkd.models.torch_layers import batch_norm, conv, kaiming_fan_out

STAGE_PLANES = (64, 128, 256, 512)
STEM_CHANNELS = 64
# name -> (block, blocks per stage, width_per_group): torchvision's resnet18 ... wide_resnet50_2.
CONFIGS = {
    "resnet18": ("basic", (2, 2, 2, 2), 64),
    "resnet34": ("basic", (3, 4, 6, 3), 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 64),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 64),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 128),
}


def shortcut(x, channels: int, stride: int, train: bool, dtype):
    """`downsample` (1x1 conv with the stride + BN) where the shape changes, else the input itself."""
    if stride == 1 and x.shape[-1] == channels:
        return x
    x = conv(x, channels, 1, "downsample.0", stride=stride, kernel_init=kaiming_fan_out, dtype=dtype)
    return batch_norm(x, "downsample.1", train)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), 3x3 convs; returns (output, pre-ReLU sum)."""

    planes: int
    stride: int
    width_per_group: int = 64  # torchvision refuses anything but 64 for BasicBlock
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        kw = dict(kernel_init=kaiming_fan_out, dtype=self.dtype)
        out = conv(x, self.planes, 3, "conv1", stride=self.stride, padding=1, **kw)
        out = nn.relu(batch_norm(out, "bn1", train))
        out = batch_norm(conv(out, self.planes, 3, "conv2", padding=1, **kw), "bn2", train)
        preact = out + shortcut(x, self.planes, self.stride, train, self.dtype)
        return nn.relu(preact), preact


class Bottleneck(nn.Module):
    """1x1 (width) - 3x3 (width, the stride) - 1x1 (4 x planes), BN after each, plus shortcut(x), width =
    planes x width_per_group / 64; returns (output, pre-ReLU sum)."""

    planes: int
    stride: int
    width_per_group: int = 64
    dtype: Any = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool):
        kw = dict(kernel_init=kaiming_fan_out, dtype=self.dtype)
        width = self.planes * self.width_per_group // 64
        out = nn.relu(batch_norm(conv(x, width, 1, "conv1", **kw), "bn1", train))
        out = conv(out, width, 3, "conv2", stride=self.stride, padding=1, **kw)
        out = nn.relu(batch_norm(out, "bn2", train))
        channels = self.planes * self.expansion
        out = batch_norm(conv(out, channels, 1, "conv3", **kw), "bn3", train)
        preact = out + shortcut(x, channels, self.stride, train, self.dtype)  # called after conv3: key order
        return nn.relu(preact), preact


def max_pool_3x3_stride2(x):
    """`nn.MaxPool2d(3, stride=2, padding=1)`: the padding never wins the max (Flax pads with -inf)."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class TorchvisionResNet(FeatureModel):
    """torchvision's `ResNet(block, layers, num_classes, width_per_group=...)`; `block` is "basic" or
    "bottleneck"."""

    block: str
    layers: tuple
    width_per_group: int = 64
    num_classes: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def forward(self, x, train: bool = False) -> ModelOutput:
        block = BasicBlock if self.block == "basic" else Bottleneck
        x = conv(x.astype(self.dtype), STEM_CHANNELS, 7, "conv1", stride=2, padding=3, kernel_init=kaiming_fan_out,
                 dtype=self.dtype)
        stem = x = nn.relu(batch_norm(x, "bn1", train))
        x = max_pool_3x3_stride2(x)
        features, preacts = [], []
        for stage, (blocks, planes) in enumerate(zip(self.layers, STAGE_PLANES), start=1):
            for i in range(blocks):
                stride = 2 if stage > 1 and i == 0 else 1
                x, preact = block(planes, stride, self.width_per_group, self.dtype,
                                  name=f"layer{stage}.{i}")(x, train)
            features.append(x)
            preacts.append(preact)
        return classify(self, x, stem, features, preacts, "fc")
