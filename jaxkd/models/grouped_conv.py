"""Grouped and depthwise convolutions written for XLA:CPU, a drop-in for `lax.conv_general_dilated` in `nn.Conv`.

XLA:CPU runs a convolution with `feature_group_count` > 1 in a generic loop: MobileNetV2's depthwise 3x3 at 32x32x48
(batch 64) takes 222 ms forward and backward where the forms below take 6.7 (PyTorch eager 11-25), a grouped 1x1
240 -> 60 123 ms against 12 (benchmarks/README.md "Depthwise and grouped convolutions on CPU"). So on CPU:

- a depthwise convolution (one input channel per group, any kernel, stride and padding, no dilation) is the sum
  over the kernel's taps of a shifted view of the padded input times that tap's per-channel weight. With stride
  `s` the padded input is first cut into its `s x s` phases (a reshape), so every tap reads one phase at an
  offset of whole rows and columns: the gradient is then a sum of plain pads, not of strided (interior) pads;
  the kernel gradient is one variadic reduction over all taps (`depthwise_by_shifts`' custom VJP). XLA fuses
  these into one loop only where YNNPACK does not take the elementwise ops (`jaxkd.engine.compile_options`);
- a grouped 1x1 convolution (ShuffleNet V1's) is one batched matmul over the groups (`einsum`);
- anything else goes to `lax.conv_general_dilated` as before.

The results equal the convolution's to float rounding (the taps are summed in another order). GPUs and TPUs keep
the convolution ops that cuDNN and the TPU compiler run well: `torch_layers.conv` passes this function to `nn.Conv`
only where JAX's default backend is the CPU.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

NHWC_HWIO = ("NHWC", "HWIO", "NHWC")  # the layout `nn.Conv` uses for images


def _is_nhwc_hwio(dimension_numbers) -> bool:
    wanted = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), NHWC_HWIO)
    return lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), dimension_numbers) == wanted


def _depthwise_taps(x, kernel_size: tuple, strides: tuple, padding: tuple) -> list:
    """The `kH * kW` shifted views of NHWC `x` that a depthwise convolution's taps multiply, each (N, out_h,
    out_w, C), in the kernel's row-major order."""
    n, height, width, channels = x.shape
    kernel_h, kernel_w = kernel_size
    (top, bottom), (left, right) = padding
    stride_h, stride_w = strides
    out_h = (height + top + bottom - kernel_h) // stride_h + 1
    out_w = (width + left + right - kernel_w) // stride_w + 1
    # Rows read: up to stride * (out - 1) + kernel - 1; round the padded size up to whole phases.
    rows = stride_h * ((kernel_h - 1) // stride_h + out_h)
    cols = stride_w * ((kernel_w - 1) // stride_w + out_w)
    rows, cols = max(rows, height + top), max(cols, width + left)
    rows, cols = -(-rows // stride_h) * stride_h, -(-cols // stride_w) * stride_w
    padded = lax.pad(x, jnp.zeros((), x.dtype),
                     ((0, 0, 0), (top, rows - height - top, 0), (left, cols - width - left, 0), (0, 0, 0)))
    phases = padded.reshape(n, rows // stride_h, stride_h, cols // stride_w, stride_w, channels)
    return [phases[:, i // stride_h:i // stride_h + out_h, i % stride_h, j // stride_w:j // stride_w + out_w,
                   j % stride_w, :]
            for i in range(kernel_h) for j in range(kernel_w)]


def _depthwise_forward(x, kernel, strides: tuple, padding: tuple):
    out = None
    for tap, weight in zip(_depthwise_taps(x, kernel.shape[:2], strides, padding),
                           kernel.reshape(-1, kernel.shape[-1])):
        term = tap * weight
        out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_by_shifts(x, kernel, strides: tuple, padding: tuple):
    """The depthwise convolution of NHWC `x` with an HW1C `kernel` (`feature_group_count` = C), `strides`
    (sh, sw) and `padding` ((top, bottom), (left, right)), as a sum of shifted multiply-adds. Its kernel gradient
    is one variadic reduction over every tap at once (one pass over the input and the output gradient, where
    autodiff's nine separate reductions read them nine times: 4x faster at 32x32x48)."""
    return _depthwise_forward(x, kernel, strides, padding)


def _depthwise_vjp_forward(x, kernel, strides, padding):
    return _depthwise_forward(x, kernel, strides, padding), (x, kernel)


def _depthwise_vjp_backward(strides, padding, residuals, out_grad):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x: _depthwise_forward(x, kernel, strides, padding), x)
    (x_grad,) = input_vjp(out_grad)
    out_grad32 = out_grad.astype(jnp.float32)  # a bfloat16 model's kernel gradient still sums in float32
    products = tuple(tap.astype(jnp.float32) * out_grad32
                     for tap in _depthwise_taps(x, kernel.shape[:2], strides, padding))
    # Over H and W first, then the batch: shorter float32 sums (and more parallel work) than one over N*H*W.
    per_image = lax.reduce(products, (np.float32(0),) * len(products),
                           lambda partial, more: tuple(a + b for a, b in zip(partial, more)), (1, 2))
    kernel_grad = jnp.sum(jnp.stack(per_image), axis=1).reshape(kernel.shape)
    return x_grad, kernel_grad.astype(kernel.dtype)


depthwise_by_shifts.defvjp(_depthwise_vjp_forward, _depthwise_vjp_backward)


def grouped_pointwise(x, kernel, strides, groups: int):
    """The grouped 1x1 convolution of NHWC `x` with a (1, 1, C_in / groups, C_out) `kernel` (output channel `o`
    in group `o // (C_out / groups)`, as PyTorch orders them), no padding: one batched matmul over the groups."""
    x = x[:, ::strides[0], ::strides[1], :]
    n, height, width, in_channels = x.shape
    out_channels = kernel.shape[-1]
    x = x.reshape(n, height, width, groups, in_channels // groups)
    weights = kernel.reshape(in_channels // groups, groups, out_channels // groups)
    out = jnp.einsum("nhwgi,igo->nhwgo", x, weights)
    return out.reshape(n, height, width, out_channels)


def cpu_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                             dimension_numbers=None, feature_group_count: int = 1, precision=None, **kwargs):
    """`lax.conv_general_dilated` with depthwise and grouped 1x1 convolutions written for XLA:CPU (above)."""
    rewritable = (feature_group_count > 1 and not kwargs and _is_nhwc_hwio(dimension_numbers)
                  and not isinstance(padding, str) and all(d == 1 for d in (lhs_dilation or (1, 1)))
                  and all(d == 1 for d in (rhs_dilation or (1, 1))))
    if rewritable and rhs.shape[2] == 1 and rhs.shape[3] == lhs.shape[3] == feature_group_count:
        return depthwise_by_shifts(lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)))
    if rewritable and rhs.shape[:2] == (1, 1) and all(p == (0, 0) for p in map(tuple, padding)):
        return grouped_pointwise(lhs, rhs, window_strides, feature_group_count)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision, **kwargs)
