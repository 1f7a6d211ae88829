"""Flax layers with PyTorch's conventions, shared by every architecture ported from PyTorch.

Convolutions pad explicitly and symmetrically like `torch.nn.Conv2d(padding=p)` (Flax's "SAME" pads (0, 1) for
stride 2 on even sizes); kernels are HWIO (`weight.transpose(2, 3, 1, 0)` of PyTorch's OIHW), and a grouped
conv's kernel is (kH, kW, in / groups, out) like PyTorch's (out, in / groups, kH, kW). The initializers are the
two that RepDistiller's models use: PyTorch's defaults and kaiming-normal with fan_out.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxkd.models.batchnorm import BatchNorm
from jaxkd.models.grouped_conv import cpu_conv_general_dilated

# torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"), also written normal_(0, sqrt(2 / n)) with
# n = kH * kW * out_channels: N(0, 2 / fan_out).
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default Conv2d / Linear weight init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)), fan_in counted
# per group as PyTorch does.
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_uniform(fan_in: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default bias init (and its default weight init)."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv(x, features: int, kernel: int, name: str, *, stride: int = 1, padding: int = 0, groups: int = 1,
         bias: bool = False, kernel_init=torch_default_kernel, bias_init=None, dtype: Any = jnp.float32):
    """`torch.nn.Conv2d(in, features, kernel, stride, padding, groups=groups, bias=bias)` applied to NHWC `x`.
    `bias_init` defaults to PyTorch's (U(+-1/sqrt(fan_in))). On CPU a grouped convolution runs as
    `jaxkd.models.grouped_conv` writes it for XLA:CPU (the same parameters, the result to float rounding)."""
    if bias and bias_init is None:
        bias_init = torch_uniform(x.shape[-1] // groups * kernel * kernel)
    grouped_on_cpu = groups > 1 and jax.default_backend() == "cpu"
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((padding, padding),) * 2,
                   feature_group_count=groups, use_bias=bias, kernel_init=kernel_init,
                   bias_init=bias_init or nn.initializers.zeros, dtype=dtype, name=name,
                   conv_general_dilated=cpu_conv_general_dilated if grouped_on_cpu else None)(x)


def linear_layer(in_features: int, features: int, name: str, *, kernel_init=torch_default_kernel, bias_init=None,
                 dtype: Any = jnp.float32) -> nn.Dense:
    """The module `torch.nn.Linear(in_features, features)` (kernel = weight.T); `bias_init` defaults to
    PyTorch's."""
    bias_init = bias_init or torch_uniform(in_features)
    return nn.Dense(features, kernel_init=kernel_init, bias_init=bias_init, dtype=dtype, name=name)


def linear(x, features: int, name: str, *, kernel_init=torch_default_kernel, bias_init=None,
           dtype: Any = jnp.float32):
    """`torch.nn.Linear(in, features)` applied to `x` (kernel = weight.T); `bias_init` defaults to PyTorch's."""
    return linear_layer(x.shape[-1], features, name, kernel_init=kernel_init, bias_init=bias_init, dtype=dtype)(x)


def batch_norm(x, name: str, train: bool):
    """`torch.nn.BatchNorm2d` with PyTorch's semantics (`jaxkd.models.batchnorm`): batch statistics and a running
    update when `train`, the running statistics otherwise."""
    return BatchNorm(name=name)(x, use_running_average=not train)


def global_average_pool(x):
    """Mean over H and W in float32: every RepDistiller model's final pool at 32x32 inputs (its fixed-size
    `AvgPool2d(8)` / `avg_pool2d(4)` windows cover the whole last feature map there)."""
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def channel_shuffle(x, groups: int):
    """ShuffleNet's shuffle on NHWC: PyTorch's view(N, g, C/g, H, W).permute(0, 2, 1, 3, 4) on channels."""
    n, h, w, c = x.shape
    return x.reshape(n, h, w, groups, c // groups).swapaxes(3, 4).reshape(n, h, w, c)
