"""The CPU forms of grouped convolutions (`jaxkd.models.grouped_conv`: depthwise as shifted multiply-adds, grouped
1x1 as a batched matmul) against PyTorch's `conv2d` in float64: outputs and both gradients, every stride, padding and
odd size the zoo uses; a bfloat16 kernel gradient summed in float32; and that the zoo's grouped students reach no XLA
grouped convolution on CPU."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax import lax

from jaxkd.models import get_model
from jaxkd.models.grouped_conv import cpu_conv_general_dilated

# |ours - float64| / |float64| over each whole array: float32 rounding is ~1e-7 (measured 1e-7 to 4e-7, as
# lax.conv_general_dilated's own); a wrong tap, phase or group order is of order 1.
REL = 2e-6
BATCH = 2

CASES = [  # (size, in channels, out channels, kernel, stride, padding, groups)
    pytest.param(7, 6, 6, 3, 1, 1, 6, id="depthwise-3x3"),
    pytest.param(8, 6, 6, 3, 2, 1, 6, id="depthwise-3x3-stride2-even"),
    pytest.param(7, 6, 6, 3, 2, 1, 6, id="depthwise-3x3-stride2-odd"),
    pytest.param(9, 4, 4, 5, 2, 2, 4, id="depthwise-5x5-stride2"),
    pytest.param(6, 5, 5, 3, 1, 0, 5, id="depthwise-unpadded"),
    pytest.param(6, 6, 9, 1, 1, 0, 3, id="grouped-1x1"),
    pytest.param(7, 6, 9, 1, 2, 0, 3, id="grouped-1x1-stride2"),
    pytest.param(6, 4, 6, 3, 1, 1, 2, id="grouped-3x3-falls-back"),
    pytest.param(6, 3, 6, 3, 1, 1, 3, id="channel-multiplier-falls-back"),
]


def _relative(ours, reference: torch.Tensor) -> float:
    reference = reference.detach().numpy()
    return float(np.linalg.norm(np.asarray(ours, np.float64) - reference) / np.linalg.norm(reference))


@pytest.mark.parametrize("size, cin, cout, kernel, stride, padding, groups", CASES)
def test_matches_pytorch_conv2d_with_both_gradients(size, cin, cout, kernel, stride, padding, groups):
    rng = np.random.default_rng(size * 100 + cout)
    x = rng.standard_normal((BATCH, size, size, cin))  # NHWC
    w = rng.standard_normal((kernel, kernel, cin // groups, cout))  # HWIO
    out_size = (size + 2 * padding - kernel) // stride + 1
    cotangent = rng.standard_normal((BATCH, out_size, out_size, cout))

    x_t = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    w_t = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)  # OIHW
    y_t = torch.nn.functional.conv2d(x_t, w_t, stride=stride, padding=padding, groups=groups)
    y_t.backward(torch.tensor(cotangent.transpose(0, 3, 1, 2)))

    def conv(x, w):
        numbers = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
        return cpu_conv_general_dilated(x, w, (stride, stride), ((padding, padding),) * 2,
                                        dimension_numbers=numbers, feature_group_count=groups)

    y, vjp = jax.vjp(conv, jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
    dx, dw = vjp(jnp.asarray(cotangent, jnp.float32))
    assert _relative(y, y_t.permute(0, 2, 3, 1)) < REL
    assert _relative(dx, x_t.grad.permute(0, 2, 3, 1)) < REL
    assert _relative(dw, w_t.grad.permute(2, 3, 1, 0)) < REL


def test_a_grouped_student_runs_no_xla_grouped_convolution_on_cpu():
    """On CPU every convolution of ShuffleV1 (depthwise 3x3 and grouped 1x1 convolutions) is a plain one
    (feature_group_count 1), forward and backward: XLA:CPU's grouped kernels are what made such students slow."""
    assert jax.default_backend() == "cpu"
    model = get_model("ShuffleV1", 10)
    images = jnp.zeros((BATCH, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, train=False))

    def gradients(variables):
        def loss(params):
            (_, logits), _ = model.apply({**variables, "params": params}, images, train=True,
                                         mutable=["batch_stats"])
            return logits.sum()
        return jax.grad(loss)(variables["params"])

    program = str(jax.make_jaxpr(gradients)(variables))
    groups = [int(count) for count in re.findall(r"feature_group_count=(\d+)", program)]
    assert groups and set(groups) == {1}


def test_a_bfloat16_depthwise_kernel_gradient_sums_in_float32():
    """A bfloat16 model's depthwise kernel gradient: bfloat16 inputs, float32 sums over the batch and pixels
    (2,048 products per weight here), one rounding to bfloat16 at the end. The reference is PyTorch's float64
    gradient of the same (bfloat16-exact) values, so the only error left is that last rounding (2^-9 relative);
    sums kept in bfloat16 are off by 1.1e-2 of the largest weight gradient here (measured)."""
    rng = np.random.default_rng(0)

    def held_by_bfloat16(values):
        return np.asarray(jnp.asarray(values, jnp.bfloat16), np.float64)

    # offsets: sums that grow, as real activations' do
    x = held_by_bfloat16(rng.standard_normal((8, 16, 16, 4)) + 1.0)
    w = held_by_bfloat16(rng.standard_normal((3, 3, 1, 4)))
    cotangent = held_by_bfloat16(rng.standard_normal((8, 16, 16, 4)) + 1.0)

    x_t = torch.tensor(x.transpose(0, 3, 1, 2))
    w_t = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)
    torch.nn.functional.conv2d(x_t, w_t, padding=1, groups=4).backward(torch.tensor(cotangent.transpose(0, 3, 1, 2)))
    reference = w_t.grad.permute(2, 3, 1, 0).numpy()

    def conv(w, x):
        numbers = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
        return cpu_conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=numbers,
                                        feature_group_count=4)

    x16, w16 = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
    _, vjp = jax.vjp(lambda w: conv(w, x16), w16)
    (dw,) = vjp(jnp.asarray(cotangent, jnp.bfloat16))
    assert dw.dtype == jnp.bfloat16
    error = np.abs(np.asarray(dw, np.float64) - reference) / np.abs(reference).max()
    assert error.max() < 2 ** -8, error.max()
