"""Trainable heads that distillation methods attach to the student.

`ConvReg` is FitNets' regressor (Romero et al., "FitNets: Hints for Thin Deep Nets", 2015) as RepDistiller's
`models/util.py` builds it: `r(x) = ReLU(BN(conv(x)))`, with the conv chosen from the
student's and the teacher's feature shapes so that r(student feature) has the teacher feature's shape.

Parameter layout, so that RepDistiller's state_dict keys map by a rename and a transpose (as in `convert`):
- `conv.weight` (Conv2d, O I kH kW)           -> params `conv/kernel` (kH, kW, I, O) = weight.transpose(2, 3, 1, 0)
- `conv.weight` (ConvTranspose2d, I O kH kW)  -> params `conv/kernel` (kH, kW, I, O) = weight.transpose(2, 3, 0, 1)
- `conv.bias` -> `conv/bias`; `bn.weight/bias` -> `bn/scale/bias`; `bn.running_mean/var` -> batch_stats `bn/mean/var`
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxkd.errors import UserError
from jaxkd.models.batchnorm import BatchNorm
from jaxkd.models.torch_layers import torch_uniform

# The three ways RepDistiller's ConvReg maps a student feature (B, sH, sW, sC) onto a teacher's (B, tH, tW, tC).
STRIDE2 = "conv3x3_stride2"  # sH == 2 tH: Conv2d(k=3, stride=2, pad=1)
TRANSPOSE = "conv_transpose4x4_stride2"  # 2 sH == tH: ConvTranspose2d(k=4, stride=2, pad=1)
VALID = "conv_valid"  # sH >= tH: Conv2d(k=(1 + sH - tH, 1 + sW - tW)), stride 1, no padding (1x1 if equal)


class ConvTranspose4x4Stride2(nn.Module):
    """`torch.nn.ConvTranspose2d(in, features, kernel_size=4, stride=2, padding=1)`, NHWC: doubles H and W.

    A transposed conv is an ordinary conv of the input dilated by the stride (zeros between pixels), padded by
    kernel - 1 - padding = 2 on every side, with the kernel flipped spatially; PyTorch stores its weight as
    (in, out, kH, kW), so the kernel here is (kH, kW, in, out), the unflipped PyTorch tensor moved to HWIO."""

    features: int

    @nn.compact
    def __call__(self, x):
        in_channels = x.shape[-1]
        fan_in = self.features * 4 * 4  # PyTorch computes fan_in from weight.size(1), i.e. `out`, here
        kernel = self.param("kernel", torch_uniform(fan_in), (4, 4, in_channels, self.features))
        bias = self.param("bias", torch_uniform(fan_in), (self.features,))
        y = jax.lax.conv_general_dilated(
            x, kernel[::-1, ::-1].astype(x.dtype), window_strides=(1, 1), padding=((2, 2), (2, 2)),
            lhs_dilation=(2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias.astype(x.dtype)


class ConvReg(nn.Module):
    """FitNets' regressor `ReLU(BN(conv(x)))` (RepDistiller `ConvReg`, use_relu=True); build it with `between`.

    The BN has PyTorch semantics and runs on batch statistics when `train` (as in RepDistiller, where the
    regressor is in train mode with the student)."""

    kind: str  # STRIDE2, TRANSPOSE or VALID
    features: int  # the teacher's channels
    kernel_size: tuple = (1, 1)  # VALID only
    use_relu: bool = True

    @staticmethod
    def between(student_shape: Sequence[int], teacher_shape: Sequence[int], use_relu: bool = True) -> "ConvReg":
        """The regressor from NHWC `student_shape` onto `teacher_shape` (RepDistiller's shape rule)."""
        _, s_h, s_w, _ = student_shape
        _, t_h, t_w, t_c = teacher_shape
        if s_h == 2 * t_h:
            return ConvReg(STRIDE2, t_c, (3, 3), use_relu)
        if 2 * s_h == t_h:
            return ConvReg(TRANSPOSE, t_c, (4, 4), use_relu)
        if s_h >= t_h and s_w >= t_w:
            return ConvReg(VALID, t_c, (1 + s_h - t_h, 1 + s_w - t_w), use_relu)
        raise UserError(f"FitNets' ConvReg cannot map a student feature of shape {tuple(student_shape)} onto a "
                        f"teacher feature of shape {tuple(teacher_shape)} (NHWC): the student's H must be twice, "
                        f"half, or at least the teacher's (and W at least the teacher's)")

    @nn.compact
    def __call__(self, x, train: bool):
        in_channels = x.shape[-1]
        if self.kind == TRANSPOSE:
            x = ConvTranspose4x4Stride2(self.features, name="conv")(x)
        else:
            fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
            stride, padding = ((2, 2), ((1, 1), (1, 1))) if self.kind == STRIDE2 else ((1, 1), "VALID")
            x = nn.Conv(self.features, self.kernel_size, strides=stride, padding=padding, use_bias=True,
                        kernel_init=torch_uniform(fan_in), bias_init=torch_uniform(fan_in), name="conv")(x)
        x = BatchNorm(name="bn")(x, use_running_average=not train)
        return nn.relu(x) if self.use_relu else x


class BYOTHead(nn.Module):
    """A shallow classifier of BYOT (Zhang et al., "Be Your Own Teacher", ICCV 2019), BYOT-U's
    `branchBottleNeck` + `avgpool` + `middle_fc` (`models/resnet.py`; docs/methods.md, "What each term is": BYOT):

        1x1 conv (-> bottleneck) -> BN -> ReLU -> k x k conv, stride k, no padding -> BN -> ReLU
        -> 1x1 conv (-> features) -> BN -> ReLU -> global average pool -> linear (-> num_classes)

    Every conv has a bias. Init as BYOT-U: conv weights kaiming-normal (fan_out, relu), conv biases PyTorch's
    default U(+-1/sqrt(fan_in)), BN 1/0, the linear layer PyTorch's default (weight and bias U(+-1/sqrt(fan_in))).
    Returns `(logits, feature)`: the feature is the pooled vector the linear layer reads (BYOT's F_s), which the
    feature loss pulls towards the network's own pooled feature. Computes in float32.

    Parameter layout against BYOT-U's `bottleneck{s}_1.{0,1,3,4,6,7}` and `middle_fc{s}`: conv{1,2,3}/kernel =
    weight.transpose(2, 3, 1, 0), bias; bn{1,2,3}/scale, bias (batch_stats mean, var); fc/kernel = weight.T, bias.
    """

    bottleneck: int  # channels of the two inner convs (BYOT: features // 4)
    features: int  # channels of the last conv = size of the pooled feature
    stride: int  # k: the middle conv's kernel size and stride
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool):
        x = x.astype(jnp.float32)
        layers = ((self.bottleneck, 1, "1"), (self.bottleneck, self.stride, "2"), (self.features, 1, "3"))
        for channels, k, index in layers:
            fan_in = x.shape[-1] * k * k
            x = nn.Conv(channels, (k, k), strides=(k, k), padding="VALID", use_bias=True,
                        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                        bias_init=torch_uniform(fan_in), name=f"conv{index}")(x)
            x = nn.relu(BatchNorm(name=f"bn{index}")(x, use_running_average=not train))
        feature = jnp.mean(x, axis=(1, 2))
        fan_in = feature.shape[-1]
        logits = nn.Dense(self.num_classes, kernel_init=torch_uniform(fan_in), bias_init=torch_uniform(fan_in),
                          name="fc")(feature)
        return logits, feature
