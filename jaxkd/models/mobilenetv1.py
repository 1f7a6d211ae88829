"""mdistiller's ImageNet MobileNetV1 (`mdistiller/models/imagenet/mobilenetv1.py`, `MobileNetV1`: the student
of the R50 -> MobileNetV1 row of the ImageNet KD table, also CRD's), in Flax, NHWC, with PyTorch's BatchNorm
semantics.

`model.0`: a 3x3 stride-2 conv-BN-ReLU to 32 channels; `model.1..13`: depthwise-separable layers (3x3
depthwise conv - BN - ReLU - 1x1 conv - BN - ReLU) to 64, 128 (s2), 128, 256 (s2), 256, 512 (s2), 5 x 512,
1024 (s2), 1024 channels; global average pooling; `fc`. Two changes to mdistiller's code, which serves 224x224
ImageNet and 1000 classes only: `fc` has `num_classes` outputs (mdistiller's `Linear(1024, 1000)` ignores it),
and the pool is global (mdistiller's `AvgPool2d(7)` then `reshape(-1, 1024)`, the same at 224x224, where the
last map is 7x7; at other sizes it fails or mixes the images of a batch).

`ModelOutput` as mdistiller's `forward(x, is_feat=True)` returns `feats`: the four stage outputs are the ReLU'd
outputs of `model.3`, `.5`, `.11`, `.13` (128, 256, 512, 1024 channels, strides 4, 8, 16, 32), their
pre-activation versions those layers' last BN outputs (its `preact_feats`); mdistiller returns no stem, here
`stem` is `model.0`'s output. Module paths mirror mdistiller's state_dict keys (`model.1/3` is `model.1.3`, the
Sequential's pointwise conv). Initialization is PyTorch's default (mdistiller sets none).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxkd.models.output import FeatureModel, ModelOutput, classify
from jaxkd.models.torch_layers import batch_norm, conv

STEM_CHANNELS = 32
# (output channels, stride) of the depthwise-separable layers model.1 ... model.13.
LAYERS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
          (512, 1), (1024, 2), (1024, 1))
STAGE_ENDS = (3, 5, 11, 13)  # mdistiller's feat1..feat4


class MobileNetV1(FeatureModel):
    """mdistiller's `MobileNetV1`, with `num_classes` outputs and a global average pool."""

    cpu_elementwise_in_xla = True

    num_classes: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def forward(self, x, train: bool = False) -> ModelOutput:
        x = conv(x.astype(self.dtype), STEM_CHANNELS, 3, "model.0.0", stride=2, padding=1, dtype=self.dtype)
        stem = x = nn.relu(batch_norm(x, "model.0.1", train))
        features, preacts = [], []
        for index, (channels, stride) in enumerate(LAYERS, start=1):
            x = conv(x, x.shape[-1], 3, f"model.{index}.0", stride=stride, padding=1, groups=x.shape[-1],
                     dtype=self.dtype)
            x = nn.relu(batch_norm(x, f"model.{index}.1", train))
            preact = batch_norm(conv(x, channels, 1, f"model.{index}.3", dtype=self.dtype), f"model.{index}.4",
                                train)
            x = nn.relu(preact)
            if index in STAGE_ENDS:
                features.append(x)
                preacts.append(preact)
        return classify(self, x, stem, features, preacts, "fc")
