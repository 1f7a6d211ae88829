"""torchvision's MobileNetV2 (`torchvision/models/mobilenetv2.py`, `MobileNetV2`, `InvertedResidual`), in Flax,
NHWC, with PyTorch's BatchNorm semantics.

`features.0`: a 3x3 stride-2 conv-BN-ReLU6 stem to 32 channels; `features.1..17`: inverted residuals (1x1
expand - BN - ReLU6, absent for expansion 1; 3x3 depthwise - BN - ReLU6; 1x1 project - BN; plus the input when
the stride is 1 and the width unchanged) in seven groups (t, c, n, s) = (1, 16, 1, 1), (6, 24, 2, 2),
(6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1); `features.18`: a 1x1 conv-BN-ReLU6
to 1280 channels; global average pooling; `classifier`: Dropout(0.2), Linear. Channels are multiplied by
`width_mult` and rounded to multiples of 8 as torchvision rounds them (`round_nearest=8`).

`ModelOutput`: `stem` is `features.0`'s output; the four stage outputs are the ends of the groups at strides
4, 8, 16, 32 (`features.3`, `.6`, `.13`, `.17`: 24, 32, 96, 320 channels), the same groups as the CIFAR
`MobileNetV2` of RepDistiller exposes; they end in a BN without activation, so `preact_features` are the same
tensors. Dropout: applied in train mode when the caller gives a `dropout` RNG (`apply(..., rngs={"dropout":
key})`), as torchvision trains; jaxkd's training engine passes none, so its runs train without it.

Module paths mirror torchvision's state_dict keys (`features.2/conv.1.0` is `features.2.conv.1.0`).
Initialization is torchvision's: convs kaiming-normal (fan_out), BN 1/0, the linear layer N(0, 0.01), bias 0.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxkd.models.output import FeatureModel, ModelOutput, classifier_output
from jaxkd.models.torch_layers import batch_norm, conv, global_average_pool, kaiming_fan_out, linear_layer

# (expansion t, channels c, blocks n, first stride s) per group, before the width multiplier.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))
STAGE_ENDS = (3, 6, 13, 17)  # the `features` indices whose outputs are the four stages (strides 4, 8, 16, 32)
STEM_CHANNELS, LAST_CHANNELS = 32, 1280


def round_channels(value: float, divisor: int = 8) -> int:
    """The nearest multiple of `divisor` to `value`, at least `divisor` and never below 90% of `value`
    (torchvision's `_make_divisible`, which every MobileNet width goes through)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_relu6(x, channels: int, kernel: int, name: str, train: bool, *, stride: int = 1, groups: int = 1,
                  dtype=jnp.float32):
    """torchvision's `Conv2dNormActivation(..., activation_layer=ReLU6)`: `{name}.0` conv, `{name}.1` BN."""
    x = conv(x, channels, kernel, f"{name}.0", stride=stride, padding=(kernel - 1) // 2, groups=groups,
             kernel_init=kaiming_fan_out, dtype=dtype)
    return nn.relu6(batch_norm(x, f"{name}.1", train))


class InvertedResidual(nn.Module):
    """torchvision's `InvertedResidual`: its `conv` Sequential, indices shifted by one without the expansion."""

    features: int
    stride: int
    expansion: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        hidden = int(round(x.shape[-1] * self.expansion))
        out, index = x, 0
        if self.expansion != 1:
            out = conv_bn_relu6(out, hidden, 1, "conv.0", train, dtype=self.dtype)
            index = 1
        out = conv_bn_relu6(out, hidden, 3, f"conv.{index}", train, stride=self.stride, groups=hidden,
                            dtype=self.dtype)
        out = conv(out, self.features, 1, f"conv.{index + 1}", kernel_init=kaiming_fan_out, dtype=self.dtype)
        out = batch_norm(out, f"conv.{index + 2}", train)
        return x + out if self.stride == 1 and x.shape[-1] == self.features else out


class TorchvisionMobileNetV2(FeatureModel):
    """torchvision's `MobileNetV2(num_classes, width_mult, dropout=0.2)`."""

    cpu_elementwise_in_xla = True

    num_classes: int = 1000
    width_mult: float = 1.0
    dropout_rate: float = 0.2
    dtype: Any = jnp.float32

    @nn.compact
    def forward(self, x, train: bool = False) -> ModelOutput:
        x = conv_bn_relu6(x.astype(self.dtype), round_channels(STEM_CHANNELS * self.width_mult), 3, "features.0",
                          train, stride=2, dtype=self.dtype)
        stem, features, index = x, [], 1
        for t, c, n, s in SETTINGS:
            for i in range(n):
                x = InvertedResidual(round_channels(c * self.width_mult), s if i == 0 else 1, t, self.dtype,
                                     name=f"features.{index}")(x, train)
                if index in STAGE_ENDS:
                    features.append(x)
                index += 1
        x = conv_bn_relu6(x, round_channels(LAST_CHANNELS * max(1.0, self.width_mult)), 1, f"features.{index}",
                          train, dtype=self.dtype)
        pooled = global_average_pool(x)
        dropped = nn.Dropout(self.dropout_rate, deterministic=not (train and self.has_rng("dropout")))(pooled)
        classifier = linear_layer(pooled.shape[-1], self.num_classes, "classifier.1",
                                  kernel_init=jax.nn.initializers.normal(0.01), bias_init=nn.initializers.zeros,
                                  dtype=self.dtype)
        return classifier_output(classifier, dropped, x, pooled, stem, features, list(features))
