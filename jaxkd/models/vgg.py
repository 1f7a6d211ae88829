"""RepDistiller's CIFAR VGGs with BatchNorm (`models/vgg.py`: vgg8/11/13/16/19 = `vgg*_bn`), in Flax, NHWC,
with PyTorch's BatchNorm semantics.

Five blocks of 3x3 conv (with bias) - BN - ReLU layers (the ReLU after each block's last BN is applied outside
the block, so the block's output is the pre-activation feature), a 2x2 max pool after blocks 0, 1, 2 (and 3
for 64x64 inputs), global average pooling and a linear classifier (512 -> classes). `stem` is relu(block0);
the stage outputs are relu(block1..4) and their pre-activation versions block1..4 (RepDistiller's preact=True).

Module paths mirror RepDistiller's state_dict keys: the Sequential index of each layer (`block1.0` conv,
`block1.1` BN, `block1.3` conv, ...), so `convert` maps them by one rule. Initialization is RepDistiller's:
convs N(0, 2 / fan_out) with zero bias, BN 1/0, classifier N(0, 0.01) with zero bias.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxkd.models.output import FeatureModel, ModelOutput, classify
from jaxkd.models.torch_layers import batch_norm, conv, kaiming_fan_out

# Channels of each conv, per block (RepDistiller's cfg 'S', 'A', 'B', 'D', 'E').
CONFIGS = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def max_pool_2x2(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))


class VGG(FeatureModel):
    """RepDistiller's `VGG(cfg, batch_norm=True)`; `depth` is 8, 11, 13, 16 or 19."""

    depth: int
    num_classes: int = 100
    dtype: Any = jnp.float32

    def bn_before_relu(self) -> tuple:
        """The params paths of the last BN of blocks 1..4, whose outputs are the `preact_features` maps (OFD's
        margins): mdistiller's vgg `get_bn_before_relu` (block{1..4}[-1])."""
        return tuple((f"block{index}.{3 * (len(CONFIGS[self.depth][index]) - 1) + 1}",) for index in range(1, 5))

    def block(self, x, index: int, train: bool):
        """conv-BN-ReLU layers, without the last ReLU; layer j's conv is `block{index}.{3j}`, its BN `3j + 1`."""
        for j, channels in enumerate(CONFIGS[self.depth][index]):
            if j:
                x = nn.relu(x)
            x = conv(x, channels, 3, f"block{index}.{3 * j}", padding=1, bias=True, kernel_init=kaiming_fan_out,
                     bias_init=nn.initializers.zeros, dtype=self.dtype)
            x = batch_norm(x, f"block{index}.{3 * j + 1}", train)
        return x

    @nn.compact
    def forward(self, x, train: bool = False) -> ModelOutput:
        height = x.shape[1]
        x = nn.relu(self.block(x.astype(self.dtype), 0, train))
        stem, features, preacts = x, [], []
        for index in range(1, 5):
            if index < 4 or height == 64:  # RepDistiller pools before block 4 only for 64x64 inputs
                x = max_pool_2x2(x)
            x = self.block(x, index, train)
            preacts.append(x)
            x = nn.relu(x)
            features.append(x)
        return classify(self, x, stem, features, preacts, "classifier",
                        kernel_init=jax.nn.initializers.normal(0.01), bias_init=nn.initializers.zeros)
