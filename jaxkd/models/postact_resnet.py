"""RepDistiller's post-activation CIFAR ResNets (`models/resnet.py`: resnet8 ... resnet110, resnet8x4,
resnet32x4), in Flax, NHWC, with PyTorch's BatchNorm semantics.

`PostActResNet(depth, filters)`: a 3x3 conv-BN-ReLU stem to filters[0] channels, three stages of n = (depth - 2)
/ 6 basic blocks with filters[1..3] channels (strides 1, 2, 2), global average pooling and a linear classifier.
A block is relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), the shortcut a 1x1 conv + BN (`downsample`)
when the stride or width changes. The stage outputs are the last blocks' outputs; their pre-activation versions
(RepDistiller's preact=True) are the residual sums before that final ReLU.

Module paths mirror RepDistiller's state_dict keys (`layer1.0/downsample.0` for `layer1.0.downsample.0`), so
`convert` maps them by one rule. Initialization is RepDistiller's: convs kaiming-normal (fan_out), BN 1/0, the
classifier PyTorch's default.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxkd.models.output import FeatureModel, ModelOutput, classify
from jaxkd.models.torch_layers import batch_norm, conv, kaiming_fan_out


class PostActBlock(nn.Module):
    """RepDistiller's `BasicBlock`; returns (output, pre-ReLU residual sum)."""

    features: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        kw = dict(kernel_init=kaiming_fan_out, dtype=self.dtype)
        out = conv(x, self.features, 3, "conv1", stride=self.stride, padding=1, **kw)
        out = nn.relu(batch_norm(out, "bn1", train))
        out = batch_norm(conv(out, self.features, 3, "conv2", padding=1, **kw), "bn2", train)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = batch_norm(conv(x, self.features, 1, "downsample.0", stride=self.stride, **kw), "downsample.1", train)
        preact = out + x
        return nn.relu(preact), preact


class PostActResNet(FeatureModel):
    """RepDistiller's `ResNet(depth, num_filters, 'basicblock')`."""

    depth: int
    filters: tuple  # (stem, stage 1, stage 2, stage 3) channels
    num_classes: int = 100
    dtype: Any = jnp.float32

    def bn_before_relu(self) -> tuple:
        """The params paths of the BN ending the residual branch of each stage's last block, whose sum is the
        stage's `preact_features` map (OFD's margins): mdistiller's resnet `get_bn_before_relu`
        (layer{1,2,3}[-1].bn2)."""
        last = (self.depth - 2) // 6 - 1
        return tuple((f"layer{stage}.{last}", "bn2") for stage in (1, 2, 3))

    @nn.compact
    def forward(self, x, train: bool = False) -> ModelOutput:
        blocks_per_stage = (self.depth - 2) // 6
        x = conv(x.astype(self.dtype), self.filters[0], 3, "conv1", padding=1, kernel_init=kaiming_fan_out,
                 dtype=self.dtype)
        x = nn.relu(batch_norm(x, "bn1", train))
        stem, features, preacts = x, [], []
        for stage, (channels, stride) in enumerate(zip(self.filters[1:], (1, 2, 2)), start=1):
            for i in range(blocks_per_stage):
                x, preact = PostActBlock(channels, stride if i == 0 else 1, self.dtype,
                                         name=f"layer{stage}.{i}")(x, train)
            features.append(x)
            preacts.append(preact)
        return classify(self, x, stem, features, preacts, "fc")
