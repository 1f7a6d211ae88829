"""The Flax model family: names, shapes, parameter counts and initialization, against the PyTorch reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.errors import UserError
from jaxkd.models import ARCHITECTURES, canonical_name, get_model
from jaxkd.pytorch.torch_models import get_torch_model

# Parameter counts of RepDistiller's WRNs, which the seed's same-named models equal (RepDistiller's `models/wrn.py`).
REPDISTILLER_PARAMS = {"wideresnet16_1": 180_916, "wideresnet16_2": 703_284,
                       "wideresnet40_1": 569_780, "wideresnet40_2": 2_255_156}


def _init(arch, num_classes=100, seed=0):
    model = get_model(arch, num_classes)
    return model, model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)))  # eager: no compile


@pytest.mark.parametrize("arch", list(REPDISTILLER_PARAMS))
def test_parameter_count_matches_published_count(arch):
    shapes = jax.eval_shape(get_model(arch).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert sum(leaf.size for leaf in jax.tree.leaves(shapes["params"])) == REPDISTILLER_PARAMS[arch]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_tensor_matches_the_pytorch_reference_shapes(arch):
    model = get_model(arch, 10)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    ours = sorted(leaf.size for leaf in jax.tree.leaves(shapes))
    theirs = sorted(t.numel() for k, t in get_torch_model(arch, 10).state_dict().items()
                    if not k.endswith("num_batches_tracked"))
    assert ours == theirs


def test_outputs_features_pooled_and_logits():
    model, variables = _init("wideresnet16_2", num_classes=7)
    images = jnp.ones((2, 32, 32, 3))
    features, logits = model.apply(variables, images, train=False)
    assert [f.shape for f in features] == [(2, 32, 32, 32), (2, 16, 16, 64), (2, 8, 8, 128)]
    assert logits.shape == (2, 7)
    out = model.apply(variables, images, train=False, method=model.forward)
    assert out.pooled.shape == (2, 128)
    # The pooled vector feeds the classifier: logits = pooled @ W + b.
    linear = variables["params"]["linear"]
    np.testing.assert_allclose(out.pooled @ linear["kernel"] + linear["bias"], logits, rtol=1e-5, atol=1e-5)


def test_initialization_follows_the_seed():
    _, variables = _init("wideresnet40_2", seed=1)
    params = variables["params"]
    kernel = np.asarray(params["layer3_2"]["conv1"]["kernel"])  # 3x3, 128 -> 128
    expected_std = np.sqrt(2.0 / (3 * 3 * 128))  # kaiming normal, fan_out
    assert abs(kernel.std() / expected_std - 1) < 0.02
    linear = np.asarray(params["linear"]["kernel"])  # (128, 100), U(-1/sqrt(128), 1/sqrt(128))
    bound = 1 / np.sqrt(128)
    assert np.abs(linear).max() <= bound and np.abs(linear).max() > 0.95 * bound
    np.testing.assert_array_equal(params["linear"]["bias"], 0)
    np.testing.assert_array_equal(params["finalact"]["scale"], 1)
    np.testing.assert_array_equal(params["finalact"]["bias"], 0)


def test_names_and_aliases():
    assert canonical_name("wrn40_2") == "wideresnet40_2"
    assert canonical_name("WRN-16-4") == "wideresnet16_4"
    assert canonical_name("resnet56") == "resnet56"
    with pytest.raises(UserError, match="unknown model 'resnet110'.*resnet56"):
        get_model("resnet110")
