"""CC: the term and its gradients w.r.t. the student's pooled vector and CC's two embeddings against
RepDistiller's `correlation_loss` and `LinearEmbed` (tests/reference/repdistiller_more_losses.py) with the same
weights, on a homogeneous and a heterogeneous pair; the embeddings initialize as PyTorch's nn.Linear; 3 engine
train steps (student and embeddings) against RepDistiller's train_distill loop. Shared code:
tests/helpers/repdistiller_feature_methods.py; the config learns in tests/test_methods_learn.py."""

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


@pytest.mark.parametrize("pair", sorted(FEATURE_PAIRS))
def test_term_and_gradients_match_pytorch(pair, rng):
    assert_module_term_and_gradients_match_pytorch("cc", pair, rng)


def test_embeddings_initialize_as_pytorch_linear():
    """nn.Linear(dim, 128): weight and bias U(+-1/sqrt(dim)), sized from the probe's pooled vectors."""
    features = lambda channels: [jnp.zeros((2, 4, 4, c)) for c in channels]  # noqa: E731
    probe = Probe(ModelOutput(features((16, 48)), jnp.zeros((2, 200)), None),
                  ModelOutput(features((32, 96, 128)), jnp.zeros((2, 300)), None), None, None, 10)
    cc = jax.jit(lambda rng: get_method("cc", recipe("cc")).init(rng, probe).variables["params"])(
        jax.random.PRNGKey(1))
    for name, dim in (("embed_student", 200), ("embed_teacher", 300)):
        assert cc[name]["kernel"].shape == (dim, 128)
        assert_uniform(cc[name]["kernel"], 1 / math.sqrt(dim), f"{name} kernel")
        bias = np.abs(np.asarray(cc[name]["bias"]))  # 128 values
        assert bias.max() <= 1 / math.sqrt(dim) and bias.max() > 0.9 / math.sqrt(dim)


def test_three_train_steps_match_pytorch():
    assert_three_train_steps_match_pytorch("cc", 12)
