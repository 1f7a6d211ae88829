"""KDSVD in both layouts (`kdsvd.layout`): the term and its gradients w.r.t. the student's features against
PyTorch references of RepDistiller's `KDSVD` (tests/reference/repdistiller_kdsvd.py) and mdistiller's
`kdsvd_loss` (tests/reference/mdistiller_kdsvd.py) on a homogeneous and a heterogeneous pair; the teacher sign
rule; one matrix per CPU SVD call; the refusal of pairs whose vectors differ in length; the settings, the
recipes, and a config.json saved before `kdsvd.layout` existed.

The references take the teacher's singular vectors' signs as jaxkd does (largest-magnitude component positive):
`torch.svd` leaves each sign open and upstream keeps whatever LAPACK returns, on which the term depends (the
RBF between consecutive stages compares one side's vectors of two stages), so no rule of jaxkd's can match it on
every input. How far jaxkd's rule is from `torch.svd`'s on the CIFAR pairs is measured by
benchmarks/kdsvd_signs.py (docs/methods.md, "Where jaxkd differs": KDSVD)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from ml_collections import ConfigDict

from configs import mdistiller
from jaxkd.errors import UserError
from jaxkd.io.workdir import check_config_json
from jaxkd.methods import Probe
from jaxkd.methods.kdsvd import KDSVD, LAYOUTS, kdsvd_losses
from jaxkd.models import ModelOutput
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.compile_once import jit_once
from tests.helpers.torch_references import nchw, nhwc
from tests.reference import mdistiller_kdsvd, repdistiller_kdsvd

BATCH = 6
STUDENT = [(8, 8, 8), (4, 4, 16), (2, 2, 32)]  # (H, W, C) of each stage
# Teachers each layout can pair with the student: equal channels (repdistiller) or equal map widths (mdistiller);
# the heterogeneous ones have other sizes, other channels (mdistiller), maps that are not square (mdistiller:
# taller ones, which a (C*W, H) view would get wrong) and 4 stages (zip pairs the first 3)
TEACHERS = {("repdistiller", "homogeneous"): STUDENT,
            ("repdistiller", "heterogeneous"): [(16, 16, 8), (8, 8, 16), (4, 4, 32), (4, 4, 64)],
            ("mdistiller", "homogeneous"): STUDENT,
            ("mdistiller", "heterogeneous"): [(16, 8, 12), (4, 4, 24), (6, 2, 8), (2, 2, 4)]}


def kdsvd_term(student_features, teacher_features, layout):
    method = KDSVD("kdsvd", ConfigDict({"kdsvd": {"layout": layout}}))
    return method.term({}, {}, ModelOutput(student_features, None, None), ModelOutput(teacher_features, None, None),
                       None, True).term


# one compile per layout, shapes and precision
_kdsvd_value_and_grad = jit_once(jax.value_and_grad(kdsvd_term), static_argnames="layout")


def kdsvd_jax(student_features, teacher_features, layout):
    """(term, gradients w.r.t. the student features) of the method, in the inputs' precision."""
    return _kdsvd_value_and_grad([jnp.asarray(f) for f in student_features],
                                 [jnp.asarray(f) for f in teacher_features], layout=layout)


def kdsvd_torch(student_features, teacher_features, layout, dtype):
    """The upstream term of the layout, with jaxkd's teacher sign rule, and its gradients (NHWC)."""
    x = [nchw(f).to(dtype).requires_grad_(True) for f in student_features]
    teacher = [nchw(f).to(dtype) for f in teacher_features]
    if layout == "mdistiller":
        term = sum(mdistiller_kdsvd.kdsvd_losses(x, teacher, dtype=dtype))
    else:
        term = sum(repdistiller_kdsvd.kdsvd_losses(x, teacher))
    term.backward()
    return term.item(), [nhwc(f.grad) for f in x]


@pytest.mark.parametrize("layout, pair", sorted(TEACHERS))
def test_kdsvd_matches_pytorch(layout, pair, rng):
    """In float64 on both sides, the term and its gradients (through the SVDs) to 1e-9 (measured ~1e-13). In
    float32 (RepDistiller's layout, the homogeneous pair: one compile more) the term to 1e-5; the float32
    gradients are compared with the float64 ones, to 1e-4 of scale: an SVD's gradient amplifies rounding by
    1/(s_i^2 - s_j^2), which leaves both frameworks' float32 gradients up to ~5e-5 of scale from the exact ones on
    these features (PyTorch's and jaxkd's alike)."""
    student = [rng.normal(size=(BATCH, *shape)) for shape in STUDENT]
    teacher = [rng.normal(size=(BATCH, *shape)) * 1.5 + 0.3 for shape in TEACHERS[layout, pair]]
    exact_value, exact_grads = kdsvd_torch(student, teacher, layout, torch.float64)
    with jax.enable_x64(True):
        value64, grads64 = kdsvd_jax(student, teacher, layout)
    assert np.asarray(grads64[0]).dtype == np.float64
    assert float(value64) == pytest.approx(exact_value, rel=1e-9) and exact_value > 1e-3
    for i, (ours, theirs) in enumerate(zip(grads64, exact_grads)):
        assert_close_scaled(ours, theirs, 1e-9, f"float64 d term / d student stage {i}")

    if (layout, pair) != ("repdistiller", "homogeneous"):
        return
    student32, teacher32 = ([f.astype(np.float32) for f in side] for side in (student, teacher))
    torch_value, torch_grads = kdsvd_torch(student32, teacher32, layout, torch.float32)
    value, grads = kdsvd_jax(student32, teacher32, layout)
    assert float(value) == pytest.approx(torch_value, rel=1e-5) and torch_value > 1e-2
    for i, (ours, theirs, exact) in enumerate(zip(grads, torch_grads, exact_grads)):
        assert_close_scaled(theirs, exact, 1e-4, f"PyTorch's float32 d term / d student stage {i}")
        assert_close_scaled(ours, exact, 1e-4, f"float32 d term / d student stage {i}")


def test_the_layouts_are_different_terms(rng):
    """The same features give another term in each layout (float64: the compiles of the parity test)."""
    student = [rng.normal(size=(BATCH, *shape)) for shape in STUDENT]
    teacher = [rng.normal(size=(BATCH, *shape)) * 1.5 + 0.3 for shape in STUDENT]
    with jax.enable_x64(True):
        values = [float(kdsvd_jax(student, teacher, layout)[0]) for layout in ("repdistiller", "mdistiller")]
    assert abs(values[0] - values[1]) > 0.1 * max(values)


def test_kdsvd_term_does_not_depend_on_the_svds_signs(rng):
    """Flipping a teacher feature's sign flips its singular vectors; the canonical sign undoes it (float32
    homogeneous: the compile of the parity test)."""
    student, teacher = ([rng.normal(size=(BATCH, *shape)).astype(np.float32) for shape in STUDENT] for _ in range(2))
    value, _ = kdsvd_jax(student, teacher, "repdistiller")
    flipped, _ = kdsvd_jax(student, [teacher[0], -teacher[1], teacher[2]], "repdistiller")
    assert float(flipped) == pytest.approx(float(value), rel=1e-5)
    torch_value = [sum(repdistiller_kdsvd.kdsvd_losses([nchw(f) for f in student], [nchw(f) for f in t])).item()
                   for t in (teacher, [teacher[0], -teacher[1], teacher[2]])]
    assert torch_value[0] == pytest.approx(float(value), rel=1e-5) == torch_value[1]


def test_each_cpu_svd_call_takes_one_matrix():
    """On a CPU every LAPACK SVD of the term and its gradient gets one matrix (`thin_svd`): jaxlib 0.10-0.11 split a
    batch over XLA's thread pool and block on it, and a KDSVD step deadlocked on 2 cores (compiled, not run)."""
    features = [jnp.ones((BATCH, *shape)) for shape in STUDENT]
    for layout in LAYOUTS:
        grad = jax.grad(lambda s, t, layout=layout: sum(kdsvd_losses(s, t, 1, layout)))
        calls = [line for line in jax.jit(grad).lower(features, features).as_text().splitlines() if "gesdd" in line]
        assert len(calls) == 2 * len(STUDENT), layout
        assert all('num_batch_dims = "0"' in call for call in calls), calls[0]


def test_kdsvd_refuses_a_pair_whose_vectors_differ_in_length():
    """Both upstream functions multiply the two sides' vectors: a stage of other channels (repdistiller) or
    other map width (mdistiller) is refused as the state is made (before anything compiles), naming the stage."""
    def features(shapes):
        return ModelOutput([jnp.zeros((2, *shape)) for shape in shapes], None, None)

    def init(layout, student, teacher):
        method = KDSVD("kdsvd", ConfigDict({"kdsvd": {"layout": layout}}))
        method.init(jax.random.PRNGKey(0), Probe(features(student), features(teacher), None, None, 10))

    with pytest.raises(UserError, match="same channels .* stage 2 has 16 and 32"):
        init("repdistiller", [(4, 4, 8), (4, 4, 16)], [(4, 4, 8), (4, 4, 32)])
    init("repdistiller", [(4, 4, 8), (4, 4, 16)], [(8, 8, 8), (2, 2, 16), (2, 2, 64)])  # other sizes; zip
    with pytest.raises(UserError, match="same width .* stage 2 has 4 and 2"):
        init("mdistiller", [(8, 8, 8), (4, 4, 16)], [(8, 8, 8), (2, 2, 16)])
    init("mdistiller", [(8, 8, 8), (4, 4, 16)], [(8, 8, 32), (8, 4, 64), (2, 2, 64)])  # other channels, heights


def test_kdsvd_settings():
    """`kdsvd.k` (K) and `kdsvd.layout` from a config section over the defaults; another layout is refused."""
    assert KDSVD("kdsvd").settings == {"k": 1, "layout": "repdistiller"}
    assert KDSVD("kdsvd", ConfigDict({"kdsvd": {"k": 2, "layout": "mdistiller"}})).settings == \
        {"k": 2, "layout": "mdistiller"}
    with pytest.raises(UserError, match="kdsvd.layout=.*mdistiller"):
        KDSVD("kdsvd", ConfigDict({"kdsvd": {"layout": "tf"}}))


def test_mdistillers_recipe_runs_its_term_and_saved_configs_keep_theirs(tmp_path):
    """`configs/mdistiller.py:T,S,kdsvd` runs mdistiller's layout; a config.json saved before `kdsvd.layout`
    existed (RepDistiller's term, under mdistiller's recipe) reads as layout repdistiller: the same run as the
    recipe with `--config.kdsvd.layout=repdistiller`, another run than today's recipe."""
    config = mdistiller.get_config("resnet32x4,resnet8x4,kdsvd")
    assert (config.kdsvd.k, config.kdsvd.layout) == (1, "mdistiller")
    saved = json.loads(config.to_json_best_effort())
    del saved["kdsvd"]["layout"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert check_config_json(config, tmp_path) == ["kdsvd"]  # differs in its kdsvd section
    config.kdsvd.layout = "repdistiller"
    assert check_config_json(config, tmp_path) == []
