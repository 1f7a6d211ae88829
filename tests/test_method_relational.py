"""SP, RKD, PKT and NST (the methods without modules): each term and its gradients w.r.t. the student's features
against PyTorch references of RepDistiller's losses (tests/reference/repdistiller_more_losses.py), on a homogeneous
pair and on a heterogeneous one (other channels, spatial sizes and stage count); their recipes. KDSVD's tests are
tests/test_method_kdsvd.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import repdistiller
from jaxkd.methods import get_method
from jaxkd.models import ModelOutput
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.method_inputs import FEATURE_PAIRS, random_model_outputs
from tests.helpers.torch_references import nchw, nhwc
from tests.reference import repdistiller_more_losses as reference

REL = 1e-5
BATCH = 6


def as_jax(out: ModelOutput) -> ModelOutput:
    return ModelOutput([jnp.asarray(f) for f in out.features], jnp.asarray(out.pooled), None)


def torch_term(method, s_feats, s_pooled, t: ModelOutput):
    """The reference term as RepDistiller's train_distill combines it: SP on feat[-2], RKD and PKT on feat[-1],
    NST summed over zip(feat[1:-1])."""
    t_feats, t_pooled = [nchw(f) for f in t.features], torch.from_numpy(t.pooled)
    if method == "sp":
        return reference.similarity_loss(s_feats[-1], t_feats[-1])
    if method == "rkd":
        distance, angle = reference.rkd_losses(s_pooled, t_pooled)
        return 25 * distance + 50 * angle
    if method == "pkt":
        return reference.pkt_loss(s_pooled, t_pooled)
    return sum(reference.nst_loss(s, t) for s, t in zip(s_feats, t_feats))


@pytest.mark.parametrize("pair", sorted(FEATURE_PAIRS))
@pytest.mark.parametrize("method", ["sp", "rkd", "pkt", "nst"])
def test_term_and_gradients_match_pytorch(method, pair, rng):
    (s_stages, s_dim), (t_stages, t_dim) = FEATURE_PAIRS[pair]
    student = random_model_outputs(rng, BATCH, s_stages, s_dim)
    teacher = random_model_outputs(rng, BATCH, t_stages, t_dim, scale=1.5, shift=0.3)
    s_feats = [nchw(f).requires_grad_(True) for f in student.features]
    s_pooled = torch.from_numpy(student.pooled).requires_grad_(True)
    expected = torch_term(method, s_feats, s_pooled, teacher)
    expected.backward()

    instance = get_method(method, repdistiller.get_config(f"wrn_40_2,wrn_16_2,{method}"))
    assert instance.uses_teacher

    def term(features, pooled):
        return instance.term({}, {}, ModelOutput(features, pooled, None), as_jax(teacher), None, True).term

    value, (grad_features, grad_pooled) = jax.jit(jax.value_and_grad(term, (0, 1)))(
        [jnp.asarray(f) for f in student.features], jnp.asarray(student.pooled))
    assert float(value) == pytest.approx(expected.item(), rel=REL)
    assert expected.item() > 1e-4  # a term that could be wrong
    used_features = method in ("sp", "nst")
    for i, (ours, theirs) in enumerate(zip(grad_features, s_feats)):
        if theirs.grad is None:  # a stage the reference does not read: no gradient here either
            assert not np.any(np.asarray(ours)), f"stage {i}"
        else:
            assert_close_scaled(ours, nhwc(theirs.grad), REL, f"d term / d student stage {i}")
    assert used_features == (s_pooled.grad is None)
    if s_pooled.grad is not None:
        assert_close_scaled(grad_pooled, s_pooled.grad.numpy(), REL, "d term / d student pooled")
    else:
        assert not np.any(np.asarray(grad_pooled))


def test_rkd_weights_and_metrics(rng):
    """`rkd.distance_weight` and `rkd.angle_weight` (RepDistiller's w_d 25, w_a 50) weigh the two logged losses."""
    student, teacher = (as_jax(random_model_outputs(rng, BATCH, [], 16)) for _ in range(2))
    config = repdistiller.get_config("wrn_40_2,wrn_16_2,rkd")
    assert (config.rkd.distance_weight, config.rkd.angle_weight) == (25.0, 50.0)
    config.rkd.angle_weight = 0.0
    out = jax.jit(lambda s, t: get_method("rkd", config).term({}, {}, s, t, None, True))(student, teacher)
    assert float(out.term) == pytest.approx(25.0 * float(out.metrics["distance"]), rel=1e-6)
    assert float(out.metrics["angle"]) > 0


@pytest.mark.parametrize("method, beta", [("sp", 3000.0), ("rkd", 1.0), ("pkt", 30000.0), ("nst", 50.0)])
def test_recipes_are_run_cifar_distill_sh(method, beta):
    config = repdistiller.get_config(f"resnet32x4,resnet8x4,{method}")
    assert config.method == method
    assert (config.loss.gamma, config.loss.alpha, config.loss.beta) == (1.0, 0.0, beta)
