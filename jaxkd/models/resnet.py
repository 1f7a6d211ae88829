"""The seed's pre-activation ResNet / WideResNet family (pytorch-kd `models/resnet.py`), in Flax.

Every model is `ResNet(blocks_per_stage=n, width=k)`: a 3x3 stem conv to 16 channels, three stages of n
pre-activation basic blocks with 16k, 32k and 64k channels (strides 1, 2, 2), a final BN-ReLU, global average
pooling and a linear classifier. WideResNet-d-k has n = (d - 4) / 6; the seed's "resnet{6n+2}" are WRN-(6n+4)-1
(pytorch-kd's `models/resnet.py`: they are not RepDistiller's post-activation resnets).

Layout is NHWC. Submodule names follow the seed's state_dict (`layer0`, `layer{g}_{i}` for `layer{g}.{i}`,
`finalact`, `linear`) so the converter's key map stays a simple rename. Initialization is the seed's: convs
kaiming-normal with fan_out, BN weight 1 / bias 0, linear weight as PyTorch's default, linear bias 0.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxkd.models.batchnorm import BatchNorm
from jaxkd.models.output import ModelOutput, classifier_output

STAGE_CHANNELS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)

# torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / (kh * kw * C_out)).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default nn.Linear weight init, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv3x3(features: int, stride: int, name: str, dtype: Any) -> nn.Conv:
    """3x3 conv with PyTorch's symmetric padding of 1 (Flax 'SAME' pads (0, 1) for stride 2 on even sizes)."""
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=False,
                   kernel_init=conv_init, dtype=dtype, name=name)


class PreActBlock(nn.Module):
    """out = conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut, the shortcut taken from relu(bn1(x)) when it
    is a 1x1 conv (stride or width change) and from x itself otherwise. Returns (out, bn1(x)): the latter is the
    previous stage's pre-ReLU feature when this block starts a stage."""

    features: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        normalized = BatchNorm(name="bn1")(x, use_running_average=not train)
        activated = nn.relu(normalized)
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = nn.Conv(self.features, (1, 1), strides=(self.stride, self.stride), padding="VALID",
                               use_bias=False, kernel_init=conv_init, dtype=self.dtype, name="shortcut")(activated)
        else:
            shortcut = x
        out = conv3x3(self.features, self.stride, "conv1", self.dtype)(activated)
        out = nn.relu(BatchNorm(name="bn2")(out, use_running_average=not train))
        out = conv3x3(self.features, 1, "conv2", self.dtype)(out)
        return out + shortcut, normalized


class ResNet(nn.Module):
    """Pre-activation ResNet with `blocks_per_stage` blocks per stage and width multiplier `width`."""

    blocks_per_stage: int
    width: int
    num_classes: int = 100
    dtype: Any = jnp.float32  # compute dtype; parameters and BN statistics stay float32

    def __call__(self, x, train: bool = False):
        """Returns `(features, logits)` like the seed's `forward`: features = [layer1, layer2, layer3]."""
        out = self.forward(x, train)
        return out.features, out.logits

    def bn_before_relu(self) -> tuple:
        """The params paths of the BN whose output is each `preact_features` map (OFD's margins): the next
        stage's first bn1 and `finalact`, mdistiller's WRN `get_bn_before_relu` (block2.layer[0].bn1,
        block3.layer[0].bn1, bn1)."""
        return (("layer2_0", "bn1"), ("layer3_0", "bn1"), ("finalact",))

    @nn.compact
    def forward(self, x, train: bool = False) -> ModelOutput:
        """The full forward pass. `stem` is the layer0 conv's output; `features` are the stage outputs
        (pre-activation residual sums); `preact_features` are those normalized by the BN that reads them next
        (the next stage's first bn1, `finalact` for the last stage) but not yet ReLU'd, i.e. RepDistiller's
        WideResNet `forward(preact=True)` features; `pooled` is the penultimate vector (used by CRD)."""
        x = conv3x3(STAGE_CHANNELS[0], 1, "layer0", self.dtype)(x.astype(self.dtype))
        stem, features, preacts = x, [], []
        for stage, (channels, stride) in enumerate(zip(STAGE_CHANNELS, STAGE_STRIDES), start=1):
            for i in range(self.blocks_per_stage):
                x, normalized_input = PreActBlock(channels * self.width, stride if i == 0 else 1, self.dtype,
                                                  name=f"layer{stage}_{i}")(x, train)
                if stage > 1 and i == 0:
                    preacts.append(normalized_input)
            features.append(x)
        x = BatchNorm(name="finalact")(x, use_running_average=not train)
        preacts.append(x)
        x = nn.relu(x)
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        classifier = nn.Dense(self.num_classes, kernel_init=linear_init, bias_init=nn.initializers.zeros,
                              dtype=self.dtype, name="linear")
        return classifier_output(classifier, pooled, x, pooled, stem, features, preacts)
