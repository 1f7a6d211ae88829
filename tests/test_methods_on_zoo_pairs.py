"""KD, FitNets, AT and CRD on heterogeneous pairs of RepDistiller's zoo (different stage counts, channels and
sizes), against RepDistiller's own code path in PyTorch: the student's `forward(x, is_feat=True, preact=False)`
in train mode, the teacher's in eval mode under no_grad (its `train_student.py`), KD on the logits, FitNets on
`feat[hint_layer]` (--hint_layer 2: the stem counts), AT on `feat[1:-1]`, CRD on `feat[-1]`, the losses from
tests/reference. jaxkd's side is the method's `term` on the `ModelOutput`s, as `jaxkd.train` calls it, after
`Method.initialize` on them; both sides hold the same weights, moved by the project's converter.

Checked per method: the term's value, the shapes of the modules it sized from the pair, and its gradient
w.r.t. every output of the student's forward pass (stem, each stage output and its pre-activation version,
pooled vector, logits), against the gradient of RepDistiller's loss w.r.t. its `feat` list and logits: equal
where RepDistiller's loss reads an output, zero where it does not. That pins down which feature each method
reads. The backward pass through the student network itself is the models' autodiff, and in train mode on a
batch of 4 its float32 rounding is ~1% of scale in PyTorch too (ShuffleV1 against float64), so it is not
compared here.

And the training engine on RepDistiller's pairs (`configs/repdistiller.py:T,S,M`, random teachers): its train
program traced for each method on resnet32x4 -> ShuffleV1 and for resnet32x4 -> resnet8x4 and vgg13 -> vgg8
(the state's structure kept, the modules sized as RepDistiller's), and one compiled step of CRD on
resnet32x4 -> ShuffleV1 (finite loss, parameters and banks updated). Learning itself is
tests/test_methods_learn.py's, on one pair for every method."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from ml_collections import ConfigDict

import convert
from configs import repdistiller
from jaxkd.data import Split
from jaxkd.engine.initial_state import create_train_state, train_state_layout
from jaxkd.engine.losses import kd_divergence
from jaxkd.engine.setup import Teacher, build
from jaxkd.engine.step import make_update, train_programs, zero_sums
from jaxkd.methods import Batch, Probe, apply_module, get_method
from jaxkd.methods.crd_kernels import sample_contrast_indices
from jaxkd.models import ModelOutput, get_model
from jaxkd.pytorch.torch_models import get_torch_model
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.compile_once import jit_once
from tests.helpers.torch_references import nchw, nhwc, randomized_torch_model
from tests.reference.repdistiller_crd import CRDLoss
from tests.reference.repdistiller_losses import Attention, ConvReg, HintLoss
from tests.reference.torch_training import DistillKL

BATCH, CLASSES, TEMPERATURE = 4, 10, 4.0
HINT_LAYER = 2  # RepDistiller's --hint_layer 2: feat[2], jaxkd's fitnet.hint_layer 1 (the stem not counted)
CRD_EXAMPLES, CRD_K = 40, 16  # a 40-example "dataset" of 4 classes, 16 negatives per anchor
# max |diff| <= REL * max |reference|. The terms' inputs come from two frameworks' float32 forward passes through
# deep networks, which agree to ~1e-5 of scale (tests/test_model_zoo.py), and KD's value is a small difference
# of large terms; reading a wrong output is off by O(1).
REL = 1e-4
# (teacher, student): RepDistiller's resnet32x4 -> ShuffleV1 (3 stages each: 32/16/8 against 16/8/4 pixels;
# FitNets' regressor is its ConvTranspose branch) and vgg13 -> MobileNetV2 (4 stages each, 16/8/4/4 against
# 16/8/4/2; the regressor a 1x1 conv). The teachers are resnet8x4 and vgg8: the same stages, channels and
# feature shapes as resnet32x4 and vgg13 (one block per stage, one conv per VGG block), compiled in less time.
PAIRS = [("rd_resnet8x4", "ShuffleV1"), ("vgg8", "MobileNetV2")]
# XLA:CPU's backend optimization off: these programs run once, and compile in half the time
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def regressor_variables(reg: ConvReg) -> dict:
    """The reference ConvReg's weights as jaxkd's ConvReg variables (Conv2d OIHW -> HWIO, ConvTranspose2d
    (in, out, kH, kW) -> (kH, kW, in, out))."""
    weight = reg.conv.weight.detach().numpy()
    transposed = isinstance(reg.conv, torch.nn.ConvTranspose2d)
    kernel = weight.transpose(2, 3, 0, 1) if transposed else weight.transpose(2, 3, 1, 0)
    as_np = lambda t: t.detach().numpy().copy()  # noqa: E731
    return {"params": {"conv": {"kernel": kernel.copy(), "bias": as_np(reg.conv.bias)},
                       "bn": {"scale": as_np(reg.bn.weight), "bias": as_np(reg.bn.bias)}},
            "batch_stats": {"bn": {"mean": as_np(reg.bn.running_mean), "var": as_np(reg.bn.running_var)}}}


def methods_config() -> ConfigDict:
    return ConfigDict({"fitnet": {"hint_layer": HINT_LAYER - 1}, "crd": {"nce_k": CRD_K}})


def output_leaves(out) -> dict:
    """name -> array of every output of a forward pass (ModelOutput, NHWC; or RepDistiller's `feat` list and
    logits as a ModelOutput of NCHW tensors, converted), in RepDistiller's names."""
    as_array = lambda x: nhwc(x) if isinstance(x, torch.Tensor) and x.ndim == 4 else np.asarray(x)  # noqa: E731
    leaves = {"feat[0]": out.stem, **{f"feat[{i + 1}]": f for i, f in enumerate(out.features)},
              f"feat[{len(out.features) + 1}] (pooled)": out.pooled, "logits": out.logits}
    leaves.update({f"preact feat[{i + 1}]": f for i, f in enumerate(out.preact_features or [])})
    return {name: None if value is None else as_array(value) for name, value in leaves.items()}


def reference_terms(torch_teacher, torch_student, images, regressor, crd, index, contrast_idx):
    """RepDistiller's losses from `forward(x, is_feat=True, preact=False)`, teacher in eval mode under no_grad,
    student in train mode; with each loss's gradient w.r.t. the student's outputs (each taken as a leaf):
    {method: (loss, ModelOutput of gradients, None where the loss does not read the output)}."""
    with torch.no_grad():
        feat_t, logit_t = torch_teacher.eval()(nchw(images), is_feat=True, preact=False)
        feat_s, logit_s = torch_student.train()(nchw(images), is_feat=True, preact=False)
    feat_s = [f.clone().requires_grad_(True) for f in feat_s]
    logit_s = logit_s.clone().requires_grad_(True)
    losses = {"kd": DistillKL(TEMPERATURE)(logit_s, logit_t),
              "fitnet": HintLoss()(regressor(feat_s[HINT_LAYER]), feat_t[HINT_LAYER]),
              "at": sum(Attention(p=2)(feat_s[1:-1], feat_t[1:-1])),
              "crd": crd(feat_s[-1], feat_t[-1], torch.from_numpy(index.astype(np.int64)),
                         torch.from_numpy(contrast_idx.astype(np.int64)))}
    results = {}
    for name, loss in losses.items():
        grads = torch.autograd.grad(loss, [*feat_s, logit_s], allow_unused=True)
        results[name] = (loss.item(), ModelOutput(list(grads[1:-2]), grads[-2], grads[-1], grads[0]))
    return results


@pytest.mark.parametrize("teacher_arch,student_arch", PAIRS)
def test_terms_and_their_feature_gradients_match_repdistiller(teacher_arch, student_arch, rng):
    seed = int(rng.integers(1 << 30))
    torch_teacher, torch_student = (randomized_torch_model(teacher_arch, CLASSES, seed=seed),
                                      randomized_torch_model(student_arch, CLASSES, seed=seed + 1))
    teacher, student = get_model(teacher_arch, CLASSES), get_model(student_arch, CLASSES)
    teacher_variables = convert.import_torch(torch_teacher.state_dict(), teacher_arch).variables
    student_variables = convert.import_torch(torch_student.state_dict(), student_arch).variables
    images = rng.standard_normal((BATCH, 32, 32, 3), dtype=np.float32)
    train_labels = np.arange(CRD_EXAMPLES, dtype=np.int32) % 4
    index = rng.choice(CRD_EXAMPLES, BATCH, replace=False).astype(np.int32)
    batch = Batch(jnp.asarray(images), jnp.asarray(train_labels[index]), jnp.asarray(index),
                  jax.random.PRNGKey(seed))

    def forward(student_variables, teacher_variables, images):
        """The student in train mode, the teacher in eval mode, as jaxkd.train's update runs them."""
        return (apply_module(student, student_variables, images, train=True, method=student.forward)[0],
                apply_module(teacher, teacher_variables, images, train=False, method=teacher.forward)[0])

    student_out, teacher_out = jit_once(forward)(student_variables, teacher_variables, batch.images)
    probe = Probe(student_out, teacher_out, batch, train_labels, CLASSES)
    methods = {name: get_method(name, methods_config()) for name in ("kd", "fitnet", "at", "crd")}
    # one compiled program for the inits (op by op they compile one program per operation and shape)
    inits = jit_once(lambda key: {name: method.initialize(key, probe) for name, method in methods.items()})(
        jax.random.PRNGKey(seed))
    assert methods["kd"].uses_teacher and not inits["kd"].variables  # KD is the engine's alpha term

    # The reference's modules, sized from RepDistiller's features: FitNets' regressor (its weights given to
    # jaxkd's), CRD's embeddings and banks (jaxkd's given to it).
    to_nchw = lambda shape: (shape[0], shape[3], shape[1], shape[2])  # noqa: E731
    torch.manual_seed(seed + 2)
    regressor = ConvReg(to_nchw(student_out.features[HINT_LAYER - 1].shape),
                        to_nchw(teacher_out.features[HINT_LAYER - 1].shape)).train()
    with torch.no_grad():
        regressor.bn.weight.uniform_(0.5, 1.5)
        regressor.bn.bias.uniform_(-0.3, 0.3)
    fitnet_variables = regressor_variables(regressor)
    assert jax.tree.map(np.shape, inits["fitnet"].variables) == jax.tree.map(np.shape, fitnet_variables)
    inits["fitnet"] = inits["fitnet"]._replace(variables=fitnet_variables)
    crd_params, crd_state = inits["crd"].variables["params"], inits["crd"].state
    crd = CRDLoss(student_out.pooled.shape[1], teacher_out.pooled.shape[1], 128, CRD_EXAMPLES, CRD_K)
    with torch.no_grad():
        for name, embed in (("embed_student", crd.embed_s), ("embed_teacher", crd.embed_t)):
            kernel = np.array(crd_params[name]["linear"]["kernel"])
            assert kernel.shape == tuple(embed.linear.weight.shape)[::-1], name
            embed.linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
            embed.linear.bias.copy_(torch.from_numpy(np.array(crd_params[name]["linear"]["bias"])))
        crd.contrast.memory_v1.copy_(torch.from_numpy(np.array(crd_state["bank_student"])))
        crd.contrast.memory_v2.copy_(torch.from_numpy(np.array(crd_state["bank_teacher"])))
    # the negatives CRD.term draws from the batch's key
    contrast_idx = np.asarray(jit_once(sample_contrast_indices, static_argnums=4)(
        batch.rng, batch.labels, batch.index, crd_state, CRD_K))

    def term(name, student_out):
        """What jaxkd.train adds for method `name`: KD's alpha term, or the method's term."""
        if name == "kd":
            return kd_divergence(student_out.logits, teacher_out.logits, TEMPERATURE)
        return methods[name].term(inits[name].variables, inits[name].state, student_out, teacher_out, batch,
                                  True).term

    ours = jit_once(lambda out: {name: jax.value_and_grad(lambda o: term(name, o))(out) for name in methods})(
        student_out)
    expected = reference_terms(torch_teacher, torch_student, images, regressor, crd, index, contrast_idx)
    for name, (loss, torch_grads) in expected.items():
        what = f"{teacher_arch} -> {student_arch} {name}"
        value, grads = ours[name]
        assert_close_scaled(value, loss, REL, what)
        grads, torch_grads = output_leaves(grads), output_leaves(torch_grads)
        read = [output for output, grad in torch_grads.items() if grad is not None]
        assert read, what
        for output, grad in grads.items():
            if torch_grads.get(output) is None:  # RepDistiller's loss does not read it: neither may jaxkd's
                assert not np.any(grad), f"{what}: the term reads {output}, RepDistiller's reads {read}"
            else:
                assert_close_scaled(grad, torch_grads[output], REL, f"{what} d/d {output}")


# --- the training engine on RepDistiller's pairs ------------------------------------------------------------

# RepDistiller's names. Every method on the heterogeneous pair; on the others the methods whose modules
# depend on the pair's shapes (tracing ShuffleV1's step costs ~3-7 s on 2 shared cores, each case here 2-6 s).
ENGINE_CASES = [("resnet32x4", "ShuffleV1", method) for method in ("kd", "fitnet", "at", "crd")] + [
    ("resnet32x4", "resnet8x4", "fitnet"), ("vgg13", "vgg8", "crd")]
ENGINE_EXAMPLES, ENGINE_BATCH = 20, 4  # 2 examples of each of 10 classes


def engine_setup(teacher_name: str, student_name: str, method: str):
    """(config, setup) of `configs/repdistiller.py:T,S,M` at batch 4 on 20 random images, with a random
    teacher (from its PyTorch reference, through the converter) and CRD at K = 8."""
    config = repdistiller.get_config(f"{teacher_name},{student_name},{method}")
    config.batch_size = ENGINE_BATCH
    if method == "crd":
        config.crd.nce_k = 8
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (ENGINE_EXAMPLES, 32, 32, 3), dtype=np.uint8))
    train = Split(images, np.arange(ENGINE_EXAMPLES, dtype=np.int32) % CLASSES,
                  np.arange(ENGINE_EXAMPLES, dtype=np.int32), CLASSES)
    arch = config.teacher.arch
    teacher = Teacher(get_model(arch, CLASSES), convert.import_torch(randomized_torch_model(arch, CLASSES, seed=0).state_dict(), arch).variables,
                      arch)
    return config, build(config, jax.devices()[:1], data=(train, train), teacher=teacher)


def repdistiller_feature_shapes(arch: str) -> list:
    """NHWC shapes of RepDistiller's `feat` list for a batch of ENGINE_BATCH, from the PyTorch reference."""
    with torch.no_grad():
        feat, _ = get_torch_model(arch, CLASSES).eval()(torch.zeros(ENGINE_BATCH, 3, 32, 32), is_feat=True)
    return [tuple(f.shape[i] for i in ((0, 2, 3, 1) if f.ndim == 4 else (0, 1))) for f in feat]


@pytest.mark.parametrize("teacher_name,student_name,method", ENGINE_CASES)
def test_engine_step_builds_for_the_pairs(teacher_name, student_name, method):
    """The engine's train state and its whole train program (batch gather, augmentation, teacher, student
    forward and backward, the method's term and modules, SGD, metric sums) traced for the pair (shapes and
    dtypes, nothing compiled): the step keeps the state's structure, and the method's modules have the shapes
    RepDistiller's would for these features."""
    config, setup = engine_setup(teacher_name, student_name, method)
    state = train_state_layout(setup)
    data = (setup.train.images, jnp.asarray(setup.train.labels), jnp.asarray(setup.train.index))
    step = train_programs(setup)[1]
    new_state, sums = jax.eval_shape(step, state, zero_sums(setup), setup.teacher.variables, *data,
                                     jnp.arange(ENGINE_EXAMPLES, dtype=jnp.int32))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), new_state) == jax.tree.map(lambda a: (a.shape, a.dtype), state)
    assert set(sums) == set(setup.metric_names) and all(v.shape == () for v in sums.values())
    student_feat, teacher_feat = (repdistiller_feature_shapes(arch) for arch in (config.model, config.teacher.arch))
    modules = state.params["method"]
    if method == "fitnet":  # ConvReg from feat_s[2] (its channels) onto feat_t[2] (its channels)
        kernel = modules["conv"]["kernel"].shape
        assert (kernel[-2], kernel[-1]) == (student_feat[HINT_LAYER][-1], teacher_feat[HINT_LAYER][-1])
        assert state.batch_stats["method"]["bn"]["mean"].shape == (teacher_feat[HINT_LAYER][-1],)
    elif method == "crd":  # the embeddings of feat_s[-1] and feat_t[-1], the banks of the 20 examples
        assert modules["embed_student"]["linear"]["kernel"].shape == (student_feat[-1][1], 128)
        assert modules["embed_teacher"]["linear"]["kernel"].shape == (teacher_feat[-1][1], 128)
        assert state.method_state["bank_student"].shape == (ENGINE_EXAMPLES, 128)
    else:
        assert not modules


def test_one_engine_step_on_the_heterogeneous_pair_trains():
    """One compiled step of the engine's update, CRD on resnet32x4 -> ShuffleV1 (the method with modules and
    state, on the heterogeneous pair): the loss is finite, the student's and the embeddings' parameters move,
    the bank rows of the batch are rewritten and Z is set."""
    config, setup = engine_setup("resnet32x4", "ShuffleV1", "crd")
    index = jnp.arange(ENGINE_BATCH, dtype=jnp.int32)
    batch = Batch(setup.pipeline.normalize(setup.train.images[:ENGINE_BATCH]), jnp.asarray(setup.train.labels)[index],
                  index, jax.random.PRNGKey(1))

    state = create_train_state(setup)
    new_state, metrics = jit_once(make_update(setup))(state, batch, setup.teacher.variables)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["term"]) > 0
    for part in ("student", "method"):
        assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params[part]),
                                                             jax.tree.leaves(new_state.params[part]))), part
    banks = np.asarray(new_state.method_state["bank_student"])
    np.testing.assert_allclose(np.linalg.norm(banks[:ENGINE_BATCH], axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(banks[ENGINE_BATCH:], state.method_state["bank_student"][ENGINE_BATCH:])
    assert float(new_state.method_state["z_student"]) > 0
