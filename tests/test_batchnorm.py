"""jaxkd's BatchNorm against torch.nn.BatchNorm2d / BatchNorm1d: outputs and running statistics."""

import jax
import numpy as np
import pytest
import torch

from jaxkd.models.batchnorm import BatchNorm
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.torch_references import nchw, nhwc


@pytest.mark.parametrize("shape", [(8, 5, 5, 6), (16, 6)], ids=["2d", "1d"])
def test_training_updates_and_eval_match_pytorch(shape, rng):
    channels = shape[-1]
    torch_bn = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(channels)
    with torch.no_grad():
        torch_bn.weight.uniform_(0.5, 1.5)
        torch_bn.bias.uniform_(-1, 1)
    to_torch = nchw if len(shape) == 4 else torch.from_numpy
    from_torch = nhwc if len(shape) == 4 else (lambda t: t.detach().numpy())

    module = BatchNorm()
    variables = module.init(jax.random.key(0), np.zeros(shape, np.float32), use_running_average=False)
    variables = {"params": {"scale": torch_bn.weight.detach().numpy().copy(),
                            "bias": torch_bn.bias.detach().numpy().copy()},
                 "batch_stats": variables["batch_stats"]}
    torch_bn.train()
    for step in range(5):  # shifted, scaled data so that biased and unbiased variance clearly differ
        x = (rng.standard_normal(shape, dtype=np.float32) * 3 + 2).astype(np.float32)
        y, updates = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
        variables = {**variables, **updates}
        assert_close_scaled(y, from_torch(torch_bn(to_torch(x))), 1e-5, f"train output, step {step}")
    stats = variables["batch_stats"]
    assert_close_scaled(stats["mean"], torch_bn.running_mean.numpy(), 1e-6, "running mean")
    assert_close_scaled(stats["var"], torch_bn.running_var.numpy(), 1e-6, "running var (unbiased)")

    torch_bn.eval()
    x = rng.standard_normal(shape, dtype=np.float32)
    y = module.apply(variables, x, use_running_average=True)
    with torch.no_grad():
        assert_close_scaled(y, from_torch(torch_bn(to_torch(x))), 1e-6, "eval output")


def test_init_does_not_touch_running_statistics(rng):
    x = rng.standard_normal((4, 3, 3, 2), dtype=np.float32) + 5
    variables = BatchNorm().init(jax.random.key(0), x, use_running_average=False)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], np.zeros(2))
    np.testing.assert_array_equal(variables["batch_stats"]["var"], np.ones(2))
