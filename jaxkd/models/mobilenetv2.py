"""RepDistiller's MobileNetV2 (`models/mobilenetv2.py`, `mobile_half`: expansion 6, width 0.5), in Flax, NHWC,
with PyTorch's BatchNorm semantics.

A 3x3 stride-2 conv-BN-ReLU stem (`conv1`) to 16 channels, seven groups of inverted residuals (`blocks.0..6`:
1x1 expand - BN - ReLU - 3x3 depthwise - BN - ReLU - 1x1 project - BN, plus the input when the stride is 1 and
the width unchanged), a 1x1 conv-BN-ReLU to 1280 channels (`conv2`), global average pooling, a linear
classifier. The stage outputs are those of blocks 1, 2, 4 and 6 (RepDistiller's f1..f4); they end in a BN
without ReLU (linear bottlenecks), so their pre-activation versions are the same tensors (RepDistiller returns
the same list for preact=True).

Module paths mirror RepDistiller's state_dict keys (`blocks.2.0/conv.3` for `blocks.2.0.conv.3`), so `convert`
maps them by one rule. Initialization is RepDistiller's: convs N(0, 2 / fan_out), BN 1/0, classifier
N(0, 0.01) with zero bias.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxkd.models.output import FeatureModel, ModelOutput, classify
from jaxkd.models.torch_layers import batch_norm, conv, kaiming_fan_out

# (expansion t, channels c, blocks n, first stride s) per group, before the width multiplier; t = T for all but
# the first group.
SETTINGS = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
            (None, 160, 3, 2), (None, 320, 1, 1))
FEATURE_GROUPS = (1, 2, 4, 6)  # the groups whose outputs are RepDistiller's f1..f4
LAST_CHANNELS = 1280


class InvertedResidual(nn.Module):
    """RepDistiller's `InvertedResidual`: the `conv` Sequential at indices 0, 1, 3, 4, 6, 7."""

    features: int
    stride: int
    expansion: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        kw = dict(kernel_init=kaiming_fan_out, dtype=self.dtype)
        hidden = x.shape[-1] * self.expansion
        out = nn.relu(batch_norm(conv(x, hidden, 1, "conv.0", **kw), "conv.1", train))
        out = conv(out, hidden, 3, "conv.3", stride=self.stride, padding=1, groups=hidden, **kw)
        out = nn.relu(batch_norm(out, "conv.4", train))
        out = batch_norm(conv(out, self.features, 1, "conv.6", **kw), "conv.7", train)
        return x + out if self.stride == 1 and x.shape[-1] == self.features else out


class MobileNetV2(FeatureModel):
    """RepDistiller's `MobileNetV2(T, feature_dim, width_mult)`; `mobile_half` is T=6, width 0.5."""

    cpu_elementwise_in_xla = True

    num_classes: int = 100
    expansion: int = 6
    width: float = 0.5
    dtype: Any = jnp.float32

    def bn_before_relu(self) -> tuple:
        """The params paths of the projection BN (`conv.7`) of the last block of groups 1, 2, 4, 6, whose
        outputs are the stage maps (OFD's margins): mdistiller's mobilenetv2 `get_bn_before_relu`
        (blocks[g][-1].conv[-1])."""
        return tuple((f"blocks.{group}.{SETTINGS[group][2] - 1}", "conv.7") for group in FEATURE_GROUPS)

    @nn.compact
    def forward(self, x, train: bool = False) -> ModelOutput:
        kw = dict(kernel_init=kaiming_fan_out, dtype=self.dtype)
        x = conv(x.astype(self.dtype), int(32 * self.width), 3, "conv1.0", stride=2, padding=1, **kw)
        x = nn.relu(batch_norm(x, "conv1.1", train))
        stem, features = x, []
        for group, (t, c, n, s) in enumerate(SETTINGS):
            for i in range(n):
                x = InvertedResidual(int(c * self.width), s if i == 0 else 1, t or self.expansion, self.dtype,
                                     name=f"blocks.{group}.{i}")(x, train)
            if group in FEATURE_GROUPS:
                features.append(x)
        last = int(LAST_CHANNELS * self.width) if self.width > 1.0 else LAST_CHANNELS
        x = nn.relu(batch_norm(conv(x, last, 1, "conv2.0", **kw), "conv2.1", train))
        return classify(self, x, stem, features, list(features), "classifier.0",
                        kernel_init=jax.nn.initializers.normal(0.01), bias_init=nn.initializers.zeros)
