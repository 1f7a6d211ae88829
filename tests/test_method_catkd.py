"""CAT-KD: its term (normalized or not, CAM resolutions 2 and 4) and its gradients w.r.t. the student's last map
and classifier kernel, against the PyTorch transcription of the authors' code (tests/reference/cat_kd_catkd.py) on
a homogeneous and a heterogeneous pair; the pairs it refuses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from ml_collections import ConfigDict

from jaxkd.config import recipes
from jaxkd.errors import UserError
from jaxkd.methods import Batch, Probe, get_method
from jaxkd.models import ModelOutput
from tests.helpers.assertions import assert_close_scaled
from tests.reference import cat_kd_catkd as reference

REL = 1e-5
BATCH, CLASSES = 6, 100
# (student map NHWC, teacher map NHWC): the same shapes; other channels and sizes (a 6x6 map pools to 4x4 with
# overlapping cells, a 2x2 map to 4x4 by repeating cells, as PyTorch's adaptive pooling)
PAIRS = {"homogeneous": ((BATCH, 8, 8, 16), (BATCH, 8, 8, 16)),
         "heterogeneous": ((BATCH, 6, 6, 24), (BATCH, 8, 8, 32)),
         "smaller student": ((BATCH, 2, 2, 24), (BATCH, 8, 8, 32))}


def random_side(rng, map_shape):
    feature_map = np.abs(rng.normal(0, 1, map_shape)).astype(np.float32)
    kernel = rng.normal(0, 0.3, (map_shape[-1], CLASSES)).astype(np.float32)
    return feature_map, kernel, rng.normal(0, 0.5, CLASSES).astype(np.float32)


def output(feature_map, kernel, bias) -> ModelOutput:
    pooled = jnp.mean(feature_map, axis=(1, 2))
    return ModelOutput([], pooled, pooled @ kernel + bias, pooled_map=feature_map, classifier_kernel=kernel,
                       classifier_bias=bias)


@pytest.mark.parametrize("pair,resolution,normalize", [("homogeneous", 2, False), ("heterogeneous", 2, True),
                                                       ("heterogeneous", 4, False), ("smaller student", 4, True)])
def test_term_and_gradients_match_the_authors_code(pair, resolution, normalize, rng):
    student, teacher = random_side(rng, PAIRS[pair][0]), random_side(rng, PAIRS[pair][1])
    method = get_method("catkd", ConfigDict({"catkd": {"resolution": resolution, "normalize": normalize}}))
    batch = Batch(jnp.zeros((BATCH, 1, 1, 1)), jnp.zeros(BATCH, jnp.int32), jnp.arange(BATCH), jax.random.key(0))

    def term(student_arrays):
        return method.term({}, {}, output(*student_arrays), output(*map(jnp.asarray, teacher)), batch, True).term

    value, grads = jax.jit(jax.value_and_grad(term))(tuple(map(jnp.asarray, student)))

    s_map, s_kernel = (torch.tensor(a, requires_grad=True) for a in student[:2])
    t_map, t_kernel = (torch.tensor(a) for a in teacher[:2])
    expected = reference.CAT_loss(reference.class_activation_maps(s_map.permute(0, 3, 1, 2), s_kernel.T),
                                  reference.class_activation_maps(t_map.permute(0, 3, 1, 2), t_kernel.T),
                                  resolution, normalize)
    expected.backward()
    assert_close_scaled(value, expected.item(), REL, "term")
    assert_close_scaled(grads[0], s_map.grad.numpy(), REL, "gradient w.r.t. the student's map")
    assert_close_scaled(grads[1], s_kernel.grad.numpy(), REL, "gradient w.r.t. the student's kernel")
    assert not np.any(grads[2])  # the class activation maps take no bias (the official conv_test has none)


def test_refuses_a_pair_with_other_classes_or_without_the_fields():
    method = get_method("catkd", None)

    def probe(student_classes, fields=True):
        def side(classes):
            out = output(jnp.zeros((2, 4, 4, 3)), jnp.zeros((3, classes)), jnp.zeros(classes))
            return out if fields else out._replace(pooled_map=None, classifier_kernel=None, classifier_bias=None)
        batch = Batch(jnp.zeros((2, 1, 1, 1)), jnp.zeros(2, jnp.int32), jnp.arange(2), jax.random.key(0))
        return Probe(side(student_classes), side(10), batch, np.zeros(2), 10)

    with pytest.raises(UserError, match="5 classes and the teacher 10"):
        method.initialize(jax.random.key(0), probe(5))
    with pytest.raises(UserError, match="no last feature map"):
        method.initialize(jax.random.key(0), probe(10, fields=False))
    method.initialize(jax.random.key(0), probe(10))


def test_recipes_are_the_authors_cifar_configs():
    # configs/cifar100/CAT_KD/wrn_40_2_wrn_16_2.yaml: CAT_loss_weight 12., CAM_RESOLUTION 2, CE_WEIGHT 1.,
    # IF_NORMALIZE False; res32x4_shuv1.yaml: 600., 4, True, LR 0.01
    wrn = recipes.mdistiller("wrn_40_2", "wrn_16_2", "catkd")
    assert (wrn.method, wrn.loss.gamma, wrn.loss.alpha, wrn.loss.beta) == ("catkd", 1.0, 0.0, 12.0)
    assert dict(wrn.catkd) == {"resolution": 2, "normalize": False}
    shuffle = recipes.mdistiller("resnet32x4", "ShuffleV1", "catkd")
    assert (shuffle.loss.beta, dict(shuffle.catkd), shuffle.optimizer.lr) == (
        600.0, {"resolution": 4, "normalize": True}, 0.01)
    # a pair without a config: mdistiller/engine/cfg.py CFG.CAT_KD's 400, 2, True
    other = recipes.mdistiller("resnet32x4", "wrn_16_2", "catkd")
    assert (other.loss.beta, dict(other.catkd)) == (400.0, {"resolution": 2, "normalize": True})
