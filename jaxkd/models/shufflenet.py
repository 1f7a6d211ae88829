"""RepDistiller's ShuffleNets (`models/ShuffleNetv1.py` `ShuffleV1`, `models/ShuffleNetv2.py` `ShuffleV2`), in
Flax, NHWC, with PyTorch's BatchNorm semantics.

Both start with a 1x1 conv-BN-ReLU stem to 24 channels (stride 1), have three stages that each halve H and W,
and end with global average pooling and a linear classifier. Stage outputs and their pre-activation versions
are what RepDistiller's `forward(is_feat=True, preact=...)` returns:
- V1 (groups 3, widths 240/480/960, 4/8/4 blocks): the pre-activation of the last block is its residual sum
  (a concat with the 3x3 average-pooled input in the stride-2 block);
- V2 (net size 1: widths 116/232/464, a 1x1 conv-BN-ReLU to 1024 before pooling): the pre-activation of the
  last block is concat(x1, bn3(...)), before the ReLU and *before* the channel shuffle, as in RepDistiller.

Module paths mirror RepDistiller's state_dict keys (`layer1.0/conv1`), so `convert` maps them by one rule.
RepDistiller leaves both at PyTorch's default initialization, and so does this module.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxkd.errors import UserError
from jaxkd.models.output import FeatureModel, ModelOutput, classify
from jaxkd.models.torch_layers import batch_norm, channel_shuffle, conv

STEM_CHANNELS = 24


def avg_pool_3x3_stride2(x):
    """`nn.AvgPool2d(3, stride=2, padding=1)` (count_include_pad=True: the zero padding counts in the mean)."""
    return nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), count_include_pad=True)


class ShuffleV1Block(nn.Module):
    """ShuffleNetV1's `Bottleneck`: grouped 1x1 - BN - ReLU - shuffle - depthwise 3x3 - BN - ReLU - grouped 1x1 -
    BN, added to the input (stride 1) or concatenated with its 3x3 average pool (stride 2). Returns (output,
    pre-ReLU sum or concat)."""

    features: int  # conv3's channels (the block's output minus the concatenated input for stride 2)
    stride: int
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        mid = self.features // 4
        first_groups = 1 if x.shape[-1] == STEM_CHANNELS else self.groups
        out = nn.relu(batch_norm(conv(x, mid, 1, "conv1", groups=first_groups, dtype=self.dtype), "bn1", train))
        out = channel_shuffle(out, first_groups)
        out = conv(out, mid, 3, "conv2", stride=self.stride, padding=1, groups=mid, dtype=self.dtype)
        out = nn.relu(batch_norm(out, "bn2", train))
        out = batch_norm(conv(out, self.features, 1, "conv3", groups=self.groups, dtype=self.dtype), "bn3", train)
        if self.stride == 2:
            preact = jnp.concatenate([out, avg_pool_3x3_stride2(x)], axis=-1)
        else:
            preact = out + x
        return nn.relu(preact), preact


class ShuffleV2DownBlock(nn.Module):
    """ShuffleNetV2's `DownBlock` (stride 2): two branches concatenated, then shuffled."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        mid, channels = self.features // 2, x.shape[-1]
        left = conv(x, channels, 3, "conv1", stride=2, padding=1, groups=channels, dtype=self.dtype)
        left = batch_norm(left, "bn1", train)
        left = nn.relu(batch_norm(conv(left, mid, 1, "conv2", dtype=self.dtype), "bn2", train))
        right = nn.relu(batch_norm(conv(x, mid, 1, "conv3", dtype=self.dtype), "bn3", train))
        right = conv(right, mid, 3, "conv4", stride=2, padding=1, groups=mid, dtype=self.dtype)
        right = batch_norm(right, "bn4", train)
        right = nn.relu(batch_norm(conv(right, mid, 1, "conv5", dtype=self.dtype), "bn5", train))
        return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleV2Block(nn.Module):
    """ShuffleNetV2's `BasicBlock`: split the channels in halves x1, x2; x2 -> 1x1 - BN - ReLU - depthwise 3x3 -
    BN - 1x1 - BN - ReLU; concat with x1 and shuffle. Returns (output, concat(x1, pre-ReLU branch))."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        out = nn.relu(batch_norm(conv(x2, half, 1, "conv1", dtype=self.dtype), "bn1", train))
        out = batch_norm(conv(out, half, 3, "conv2", padding=1, groups=half, dtype=self.dtype), "bn2", train)
        branch = batch_norm(conv(out, half, 1, "conv3", dtype=self.dtype), "bn3", train)
        out = channel_shuffle(jnp.concatenate([x1, nn.relu(branch)], axis=-1), 2)
        return out, jnp.concatenate([x1, branch], axis=-1)


def no_bn_before_relu(name: str):
    """mdistiller's ShuffleNets refuse to be OFD teachers (their `get_bn_before_relu` raises NotImplementedError,
    'ShuffleNet currently is not supported for "Overhaul" teacher'); so do these, rather than name a BN it does
    not (a stride-2 block's pre-ReLU map is partly an average-pooled input that no BN normalizes)."""
    raise UserError(f"ofd: {name} cannot be OFD's teacher: mdistiller names no BN before its stage ReLUs (its "
                    f"get_bn_before_relu raises); use another teacher")


class ShuffleNetV1(FeatureModel):
    """RepDistiller's `ShuffleV1`."""

    num_classes: int = 100
    widths: tuple = (240, 480, 960)
    blocks: tuple = (4, 8, 4)
    groups: int = 3
    dtype: Any = jnp.float32

    def bn_before_relu(self) -> tuple:
        no_bn_before_relu("ShuffleV1")

    @nn.compact
    def forward(self, x, train: bool = False) -> ModelOutput:
        x = conv(x.astype(self.dtype), STEM_CHANNELS, 1, "conv1", dtype=self.dtype)
        x = nn.relu(batch_norm(x, "bn1", train))
        stem, features, preacts = x, [], []
        for stage, (width, blocks) in enumerate(zip(self.widths, self.blocks), start=1):
            for i in range(blocks):
                channels = width - x.shape[-1] if i == 0 else width  # stride 2 concatenates its input
                x, preact = ShuffleV1Block(channels, 2 if i == 0 else 1, self.groups, self.dtype,
                                           name=f"layer{stage}.{i}")(x, train)
            features.append(x)
            preacts.append(preact)
        return classify(self, x, stem, features, preacts, "linear")


class ShuffleNetV2(FeatureModel):
    """RepDistiller's `ShuffleV2` (`ShuffleNetV2(net_size=1)`)."""

    # Not ShuffleV1: its step is faster with YNNPACK's elementwise fusions (jaxkd.engine.compile_options).
    cpu_elementwise_in_xla = True

    num_classes: int = 100
    widths: tuple = (116, 232, 464)
    blocks: tuple = (3, 7, 3)
    last_channels: int = 1024
    dtype: Any = jnp.float32

    def bn_before_relu(self) -> tuple:
        no_bn_before_relu("ShuffleV2")

    @nn.compact
    def forward(self, x, train: bool = False) -> ModelOutput:
        x = nn.relu(batch_norm(conv(x.astype(self.dtype), STEM_CHANNELS, 1, "conv1", dtype=self.dtype), "bn1", train))
        stem, features, preacts = x, [], []
        for stage, (width, blocks) in enumerate(zip(self.widths, self.blocks), start=1):
            x = ShuffleV2DownBlock(width, self.dtype, name=f"layer{stage}.0")(x, train)
            for i in range(1, blocks + 1):
                x, preact = ShuffleV2Block(self.dtype, name=f"layer{stage}.{i}")(x, train)
            features.append(x)
            preacts.append(preact)
        x = nn.relu(batch_norm(conv(x, self.last_channels, 1, "conv2", dtype=self.dtype), "bn2", train))
        return classify(self, x, stem, features, preacts, "linear")
