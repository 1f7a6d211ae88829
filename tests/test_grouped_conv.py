"""The CPU forms of grouped convolutions (`jaxkd.models.grouped_conv`: depthwise as shifted multiply-adds, grouped
1x1 as a batched matmul) against PyTorch's `conv2d` in float64: outputs and both gradients, every stride, padding and
odd size the zoo uses; and that the zoo's grouped students reach no XLA grouped convolution on CPU."""

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
