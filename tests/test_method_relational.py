"""SP, RKD, PKT, NST and KDSVD (the methods without modules): each term and its gradients w.r.t. the student's
features against PyTorch references of RepDistiller's losses (tests/reference/repdistiller_more_losses.py), on
a homogeneous pair and on a heterogeneous one (other channels, spatial sizes and stage count; for KDSVD, which
needs equal channels, other sizes and stage count); their recipes; KDSVD's refusal of other widths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from ml_collections import ConfigDict

from configs import repdistiller
from jaxkd.errors import UserError
from jaxkd.methods import Probe, get_method
from jaxkd.methods.kdsvd import KDSVD
from jaxkd.models import ModelOutput
from tests.conftest import FEATURE_PAIRS, assert_close_scaled, nchw, nhwc, random_model_outputs
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


# --- KDSVD: its pairs need equal channels at every paired stage ----------------------------------------------------

KDSVD_TEACHERS = {"homogeneous": [(8, 8, 8), (4, 4, 16), (2, 2, 32)],
                  "heterogeneous": [(16, 16, 8), (8, 8, 16), (4, 4, 32), (4, 4, 64)]}  # other sizes, 4 stages


def kdsvd_term(student_features, teacher_features):
    method = KDSVD("kdsvd")
    return method.term({}, {}, ModelOutput(student_features, None, None), ModelOutput(teacher_features, None, None),
                       None, True).term


_kdsvd_value_and_grad = jax.jit(jax.value_and_grad(kdsvd_term))  # one compile per shapes and precision


def kdsvd_jax(student_features, teacher_features):
    """(term, gradients w.r.t. the student features) of the method, in the inputs' precision."""
    return _kdsvd_value_and_grad([jnp.asarray(f) for f in student_features],
                                 [jnp.asarray(f) for f in teacher_features])


def kdsvd_torch(student_features, teacher_features, dtype):
    x = [nchw(f).to(dtype).requires_grad_(True) for f in student_features]
    term = sum(reference.kdsvd_losses(x, [nchw(f).to(dtype) for f in teacher_features]))
    term.backward()
    return term.item(), [nhwc(f.grad) for f in x]


@pytest.mark.parametrize("pair", sorted(KDSVD_TEACHERS))
def test_kdsvd_matches_pytorch(pair, rng):
    """In float64 on both sides, the term and its gradients (through the SVDs) to 1e-9 (measured ~1e-13). In
    float32 (the homogeneous pair) the term to 1e-5; the float32 gradients are compared with the float64 ones, to 1e-4 of scale: an
    SVD's gradient amplifies rounding by 1/(s_i^2 - s_j^2), which leaves both frameworks' float32 gradients up to
    ~5e-5 of scale from the exact ones on these features (PyTorch's and jaxkd's alike)."""
    student = [rng.normal(size=(BATCH, *shape)) for shape in [(8, 8, 8), (4, 4, 16), (2, 2, 32)]]
    teacher = [rng.normal(size=(BATCH, *shape)) * 1.5 + 0.3 for shape in KDSVD_TEACHERS[pair]]
    exact_value, exact_grads = kdsvd_torch(student, teacher, torch.float64)
    with jax.enable_x64(True):
        value64, grads64 = kdsvd_jax(student, teacher)
    assert np.asarray(grads64[0]).dtype == np.float64
    assert float(value64) == pytest.approx(exact_value, rel=1e-9)
    for i, (ours, theirs) in enumerate(zip(grads64, exact_grads)):
        assert_close_scaled(ours, theirs, 1e-9, f"float64 d term / d student stage {i}")

    if pair != "homogeneous":  # float32 once (each precision is a compile of SVD gradients: ~5-10 s)
        return
    student32, teacher32 = ([f.astype(np.float32) for f in side] for side in (student, teacher))
    torch_value, torch_grads = kdsvd_torch(student32, teacher32, torch.float32)
    value, grads = kdsvd_jax(student32, teacher32)
    assert float(value) == pytest.approx(torch_value, rel=REL) and torch_value > 1e-2
    for i, (ours, theirs, exact) in enumerate(zip(grads, torch_grads, exact_grads)):
        assert_close_scaled(theirs, exact, 1e-4, f"PyTorch's float32 d term / d student stage {i}")
        assert_close_scaled(ours, exact, 1e-4, f"float32 d term / d student stage {i}")


def test_kdsvd_term_does_not_depend_on_the_svds_signs(rng):
    """Flipping a teacher feature's sign flips its singular vectors; the canonical sign undoes it."""
    shapes = KDSVD_TEACHERS["homogeneous"]  # the shapes of the parity test: the same compiled term
    student, teacher = ([rng.normal(size=(BATCH, *shape)).astype(np.float32) for shape in shapes] for _ in range(2))
    value, _ = kdsvd_jax(student, teacher)
    flipped, _ = kdsvd_jax(student, [teacher[0], -teacher[1], teacher[2]])
    assert float(flipped) == pytest.approx(float(value), rel=1e-5)


def test_kdsvd_refuses_a_pair_of_other_widths():
    """RepDistiller's align_rsv multiplies the two sides' vectors: a stage of other channels is refused as the
    state is made (before anything compiles), naming the stage."""
    features = lambda channels: ModelOutput([jnp.zeros((2, 4, 4, c)) for c in channels], None, None)  # noqa: E731
    method = KDSVD("kdsvd")
    with pytest.raises(UserError, match="stage 2 has 16 and 32"):
        method.init(jax.random.PRNGKey(0), Probe(features((8, 16, 32)), features((8, 32, 64)), None, None, 10))
    method.init(jax.random.PRNGKey(0), Probe(features((8, 16)), features((8, 16, 64)), None, None, 10))  # zip


def test_kdsvd_settings():
    """`kdsvd.k` (RepDistiller's KDSVD(k=1)) from a config section over the default."""
    assert KDSVD("kdsvd").settings == {"k": 1}
    assert KDSVD("kdsvd", ConfigDict({"kdsvd": {"k": 2}})).settings == {"k": 2}
