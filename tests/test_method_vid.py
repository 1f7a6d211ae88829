"""VID: the term and its gradients w.r.t. the student's stage outputs and VID's regressors and variances against
RepDistiller's `VIDLoss` (tests/reference/repdistiller_more_losses.py) with the same weights, on a homogeneous and
a heterogeneous pair; the modules initialize as PyTorch's defaults; 3 engine train steps (student and modules)
against RepDistiller's train_distill loop. Shared code: tests/helpers/repdistiller_feature_methods.py; the config
learns in tests/test_methods_learn.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.methods import Probe, get_method
from jaxkd.models import ModelOutput
from tests.helpers.assertions import assert_uniform
from tests.helpers.method_inputs import FEATURE_PAIRS
from tests.helpers.repdistiller_feature_methods import (assert_module_term_and_gradients_match_pytorch,
                                                        assert_three_train_steps_match_pytorch, recipe)
from tests.reference import repdistiller_more_losses as reference


@pytest.mark.parametrize("pair", sorted(FEATURE_PAIRS))
def test_term_and_gradients_match_pytorch(pair, rng):
    assert_module_term_and_gradients_match_pytorch("vid", pair, rng)


def test_modules_initialize_as_pytorch_defaults():
    """1x1 bias-free convs U(+-1/sqrt(in)), the hidden and output widths the teacher's channels, one module per
    zipped stage, log_scale the reference's float32 constant softplus^-1(5 - 1e-5)."""
    features = lambda channels: [jnp.zeros((2, 4, 4, c)) for c in channels]  # noqa: E731
    probe = Probe(ModelOutput(features((16, 48)), jnp.zeros((2, 200)), None),
                  ModelOutput(features((32, 96, 128)), jnp.zeros((2, 300)), None), None, None, 10)
    vid = jax.jit(lambda rng: get_method("vid", recipe("vid")).init(rng, probe).variables["params"])(
        jax.random.PRNGKey(2))
    assert sorted(vid) == ["stage1", "stage2"]  # zip: the student has two stages
    expected_log_scale = reference.VIDLoss(1, 1, 1).log_scale.detach().numpy()[0]
    for stage, (s, t) in zip(("stage1", "stage2"), ((16, 32), (48, 96))):
        for conv, (c_in, c_out) in (("conv1", (s, t)), ("conv2", (t, t)), ("conv3", (t, t))):
            kernel = vid[stage][conv]["kernel"]
            assert kernel.shape == (1, 1, c_in, c_out) and set(vid[stage][conv]) == {"kernel"}
            assert_uniform(kernel, 1 / math.sqrt(c_in), f"{stage} {conv}")
        assert vid[stage]["log_scale"].dtype == jnp.float32
        assert np.all(np.asarray(vid[stage]["log_scale"]) == expected_log_scale)
    # distinct draws per module
    assert not np.array_equal(vid["stage1"]["conv2"]["kernel"][..., :32, :32],
                              vid["stage2"]["conv1"]["kernel"][..., :32, :32])


def test_three_train_steps_match_pytorch():
    assert_three_train_steps_match_pytorch("vid", 13)
