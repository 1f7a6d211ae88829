"""ReviewKD: the ABF chain's outputs, BN running statistics, the HCL term with its warm-up, and the gradients
w.r.t. the ABFs' parameters and the student's features, against the PyTorch reference of mdistiller's
`ReviewKD` (tests/reference/mdistiller_losses.py) with the same weights; the ABFs' initialization against
PyTorch's as mdistiller applies it."""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import torch
from ml_collections import ConfigDict

from jaxkd.methods import Batch, Probe, get_method
from jaxkd.methods.reviewkd import ABF, ReviewKD
from jaxkd.models import ModelOutput
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.compile_once import jit_once
from tests.helpers.torch_references import nchw, nhwc
from tests.reference.mdistiller_losses import ABF as TorchABF
from tests.reference.mdistiller_losses import ReviewKDStudentSide, dkd_warmup

REL = 1e-5
BATCH = 4
# (student (H, C) per stage, pooled C; teacher likewise) at 16x16 input: the last stage's map is resized up to
# the teacher's 4x4 (the only level that is), whose fused result is then upsampled 4 -> 8 for the next level
PAIR = (((16, 8), (8, 16), (2, 24)), 24, ((16, 12), (8, 20), (4, 40)), 40)


def model_output(rng, stages, pooled) -> ModelOutput:
    """Random stage maps (post-ReLU-like `features`, signed `preact_features`) and pooled vector."""
    preacts = [rng.normal(size=(BATCH, h, h, c)).astype(np.float32) for h, c in stages]
    return ModelOutput([np.maximum(p, 0) for p in preacts], rng.normal(size=(BATCH, pooled)).astype(np.float32),
                       None, None, preacts)


def reference_for(student: ModelOutput, teacher: ModelOutput) -> ReviewKDStudentSide:
    """mdistiller's ReviewKD with its config lists written for the pair (IN/OUT_CHANNELS shallowest first,
    SHAPES/OUT_SHAPES deepest first)."""
    in_channels = [f.shape[-1] for f in student.features] + [student.pooled.shape[-1]]
    out_channels = [f.shape[-1] for f in teacher.preact_features] + [teacher.pooled.shape[-1]]
    shapes = [1] + [f.shape[1] for f in student.features][::-1]
    out_shapes = [1] + [f.shape[1] for f in teacher.preact_features][::-1]
    return ReviewKDStudentSide(in_channels, out_channels, shapes, out_shapes)


def test_abf_chain_and_hcl_match_mdistiller(rng):
    """Train mode at epoch 7 of a 20-epoch warm-up, from the same ABF weights (the reference's, in the method's
    variable layout): the term (7/20 * HCL), each ABF output, the running statistics after the step, and the
    gradients w.r.t. every ABF parameter and every student feature."""
    s_stages, s_pooled, t_stages, t_pooled = PAIR
    student, teacher = model_output(rng, s_stages, s_pooled), model_output(rng, t_stages, t_pooled)
    method = get_method("reviewkd", ConfigDict({"reviewkd": ReviewKD.defaults}))
    torch.manual_seed(int(rng.integers(1 << 30)))
    reference = reference_for(student, teacher)
    variables = reference.jax_variables()
    layout = jax.eval_shape(lambda: method.init(jax.random.PRNGKey(0), Probe(student, teacher, None, None, 10)))
    assert jax.tree_util.tree_structure(layout.variables) == jax.tree_util.tree_structure(variables)
    assert [a.shape for a in jax.tree_util.tree_leaves(layout.variables)] == \
        [a.shape for a in jax.tree_util.tree_leaves(variables)]
    batch = Batch(None, None, None, None, epoch=jnp.asarray(7, jnp.int32))

    def term(params, features, pooled, teacher):
        this_student = student._replace(features=features, pooled=pooled)
        out = method.term({"params": params, "batch_stats": variables["batch_stats"]}, {}, this_student, teacher,
                          batch, True)
        chain_outputs = method.module(this_student, teacher).apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, method.levels(this_student, teacher)[0],
            train=True, mutable=["batch_stats"])[0]
        return out.term, (out, chain_outputs)

    (value, (out, chain_outputs)), grads = jit_once(jax.value_and_grad(term, argnums=(0, 1, 2), has_aux=True))(
        variables["params"], [jnp.asarray(f) for f in student.features], jnp.asarray(student.pooled), teacher)

    reference.train()
    features = [nchw(f).requires_grad_() for f in student.features]
    pooled = torch.tensor(student.pooled, requires_grad=True)
    results, hcl = reference(features, pooled, [nchw(f) for f in teacher.preact_features],
                             torch.tensor(teacher.pooled))
    ref_term = dkd_warmup(7, 20) * hcl
    ref_term.backward()

    assert_close_scaled(value, ref_term.detach().numpy(), REL, "term")
    assert_close_scaled(out.metrics["hcl"], hcl.detach().numpy(), REL, "hcl")
    for level, (ours, ref) in enumerate(zip(chain_outputs, results)):
        assert_close_scaled(ours, nhwc(ref), REL, f"ABF output, level {level}")
    param_grads, feature_grads, pooled_grad = grads
    for i, abf in enumerate(reference.abfs):
        ours_p, ours_stats = param_grads[f"abf{i}"], out.batch_stats[f"abf{i}"]
        assert_close_scaled(np.asarray(ours_p["conv1"]["kernel"]).transpose(3, 2, 0, 1),
                            abf.conv1[0].weight.grad.numpy(), REL, f"abf{i} conv1 grad")
        assert_close_scaled(np.asarray(ours_p["conv2"]["kernel"]).transpose(3, 2, 0, 1),
                            abf.conv2[0].weight.grad.numpy(), REL, f"abf{i} conv2 grad")
        for bn, name in ((abf.conv1[1], "bn1"), (abf.conv2[1], "bn2")):
            assert_close_scaled(ours_p[name]["scale"], bn.weight.grad.numpy(), REL, f"abf{i} {name} scale grad")
            assert_close_scaled(ours_p[name]["bias"], bn.bias.grad.numpy(), REL, f"abf{i} {name} bias grad")
            # the running mean to the features' scale (a BN after a BN over 1x1 maps has a batch mean of ~1e-9)
            mean_error = np.max(np.abs(np.asarray(ours_stats[name]["mean"]) - bn.running_mean.numpy()))
            assert mean_error <= REL * np.sqrt(np.max(bn.running_var.numpy())), f"abf{i} {name} mean"
            assert_close_scaled(ours_stats[name]["var"], bn.running_var.numpy(), REL, f"abf{i} {name} var")
        assert (abf.att_conv is None) == (i == 0) == ("att_conv" not in ours_p)
        if abf.att_conv is not None:
            assert_close_scaled(np.asarray(ours_p["att_conv"]["kernel"]).transpose(3, 2, 0, 1),
                                abf.att_conv[0].weight.grad.numpy(), REL, f"abf{i} att_conv grad")
            assert_close_scaled(ours_p["att_conv"]["bias"], abf.att_conv[0].bias.grad.numpy(), REL,
                                f"abf{i} att_conv bias grad")
    for level, (ours, ref) in enumerate(zip(feature_grads, features)):
        assert_close_scaled(ours, nhwc(ref.grad), REL, f"student feature grad, stage {level + 1}")
    assert_close_scaled(pooled_grad, pooled.grad.numpy(), REL, "student pooled grad")


def test_abf_initialization_is_mdistillers():
    """One fused ABF (24 -> 32 -> 40 channels; the unfused one differs only by lacking att_conv), against
    mdistiller's `ABF(24, 32, 40, fuse=True)`: conv1 and conv2 kaiming_uniform_(a=1), U(+-sqrt(3 / fan_in));
    att_conv PyTorch's default Conv2d weight and bias, U(+-1/sqrt(fan_in)); BN 1 / 0 with running statistics
    0 / 1. Each JAX tensor must be a sample of the bound the PyTorch module uses (Kolmogorov-Smirnov, and the
    same bound as the torch module's own freshly initialized tensor, whose maximum is close to it). The chain's
    sizes (mid channels = min(512, the pooled size), one ABF per level) are checked by the parity test above."""
    x, residual = jnp.zeros((2, 4, 4, 24)), jnp.zeros((2, 2, 2, 32))
    variables = jax.jit(lambda key, x, r: ABF(32, 40, fuse=True).init(key, x, r, 4, train=False))(
        jax.random.PRNGKey(3), x, residual)
    p, stats = variables["params"], variables["batch_stats"]
    torch.manual_seed(0)
    reference = TorchABF(24, 32, 40, fuse=True)
    tensors = [("conv1", p["conv1"]["kernel"], reference.conv1[0].weight, np.sqrt(3 / 24)),
               ("conv2", p["conv2"]["kernel"], reference.conv2[0].weight, np.sqrt(3 / (32 * 9))),
               ("att_conv", p["att_conv"]["kernel"], reference.att_conv[0].weight, 1 / np.sqrt(64)),
               ("att_conv bias", p["att_conv"]["bias"], reference.att_conv[0].bias, 1 / np.sqrt(64))]
    for name, ours, theirs, bound in tensors:
        ours, theirs = np.asarray(ours).ravel(), theirs.detach().numpy().ravel()
        assert ours.shape == theirs.shape, name
        assert np.max(np.abs(ours)) <= bound and np.max(np.abs(theirs)) <= bound, name
        assert np.max(np.abs(theirs)) > 0.8 * bound or theirs.size < 20, name  # the reference's bound
        # PyTorch's default bound instead of kaiming a=1's, sqrt(3) smaller, gives p < 1e-20 on the kernels
        assert scipy.stats.kstest(ours, scipy.stats.uniform(-bound, 2 * bound).cdf).pvalue > 1e-3, name
    for name in ("bn1", "bn2"):
        assert np.all(np.asarray(p[name]["scale"]) == 1) and not np.any(np.asarray(p[name]["bias"]))
        assert not np.any(np.asarray(stats[name]["mean"])) and np.all(np.asarray(stats[name]["var"]) == 1)


def test_student_preact_reads_the_preactivation_stage_outputs(rng):
    """`reviewkd.student_preact` (mdistiller's STU_PREACT) switches the student's maps to `preact_features`."""
    s_stages, s_pooled, t_stages, t_pooled = PAIR
    student, teacher = model_output(rng, s_stages, s_pooled), model_output(rng, t_stages, t_pooled)
    for preact, expected in ((False, student.features), (True, student.preact_features)):
        method = get_method("reviewkd", ConfigDict({"reviewkd": dict(ReviewKD.defaults, student_preact=preact)}))
        maps, teacher_maps = method.levels(student, teacher)
        assert all(np.array_equal(a, b) for a, b in zip(maps[1:], expected[::-1]))
        assert all(np.array_equal(a, b) for a, b in zip(teacher_maps[:-1], teacher.preact_features))
