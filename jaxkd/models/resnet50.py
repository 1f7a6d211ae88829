"""RepDistiller's `ResNet50` (`models/resnetv2.py`: the torchvision-style bottleneck ResNet for 32x32 inputs),
in Flax, NHWC, with PyTorch's BatchNorm semantics.

A 3x3 conv-BN-ReLU stem to 64 channels (stride 1, no max pool), four stages of 3, 4, 6, 3 bottlenecks with 64,
128, 256, 512 inner channels (outputs x4; strides 1, 2, 2, 2), global average pooling, a linear classifier. A
bottleneck is relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x)), its stride on the 3x3 conv,
the shortcut a 1x1 conv + BN when the stride or width changes. Stage outputs and their pre-ReLU residual sums
are exposed as RepDistiller's `forward(is_feat=True, preact=...)` does.

Module paths mirror RepDistiller's state_dict keys (`layer2.0/shortcut.0`), so `convert` maps them by one rule.
Initialization is RepDistiller's: convs kaiming-normal (fan_out), BN 1/0, the classifier PyTorch's default.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxkd.models.output import FeatureModel, ModelOutput, classify
from jaxkd.models.torch_layers import batch_norm, conv, kaiming_fan_out

EXPANSION = 4


class Bottleneck(nn.Module):
    """resnetv2's `Bottleneck`; returns (output, pre-ReLU residual sum)."""

    planes: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        kw = dict(kernel_init=kaiming_fan_out, dtype=self.dtype)
        out = nn.relu(batch_norm(conv(x, self.planes, 1, "conv1", **kw), "bn1", train))
        out = conv(out, self.planes, 3, "conv2", stride=self.stride, padding=1, **kw)
        out = nn.relu(batch_norm(out, "bn2", train))
        out = batch_norm(conv(out, self.planes * EXPANSION, 1, "conv3", **kw), "bn3", train)
        if self.stride != 1 or x.shape[-1] != self.planes * EXPANSION:
            x = conv(x, self.planes * EXPANSION, 1, "shortcut.0", stride=self.stride, **kw)
            x = batch_norm(x, "shortcut.1", train)
        preact = out + x
        return nn.relu(preact), preact


class ResNet50(FeatureModel):
    """RepDistiller's `ResNet(Bottleneck, [3, 4, 6, 3])`."""

    num_classes: int = 100
    blocks: tuple = (3, 4, 6, 3)
    dtype: Any = jnp.float32

    def bn_before_relu(self) -> tuple:
        """The params paths of the BN ending the residual branch of each stage's last bottleneck (OFD's
        margins): mdistiller's resnetv2 `get_bn_before_relu` (layer{1..4}[-1].bn3)."""
        return tuple((f"layer{stage}.{blocks - 1}", "bn3") for stage, blocks in enumerate(self.blocks, start=1))

    @nn.compact
    def forward(self, x, train: bool = False) -> ModelOutput:
        x = conv(x.astype(self.dtype), 64, 3, "conv1", padding=1, kernel_init=kaiming_fan_out, dtype=self.dtype)
        x = nn.relu(batch_norm(x, "bn1", train))
        stem, features, preacts = x, [], []
        for stage, (blocks, planes, stride) in enumerate(zip(self.blocks, (64, 128, 256, 512), (1, 2, 2, 2)), 1):
            for i in range(blocks):
                x, preact = Bottleneck(planes, stride if i == 0 else 1, self.dtype,
                                       name=f"layer{stage}.{i}")(x, train)
            features.append(x)
            preacts.append(preact)
        return classify(self, x, stem, features, preacts, "linear")
