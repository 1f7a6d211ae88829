"""KD, DKD, AT, CRD and ReviewKD on the ImageNet pairs' feature shapes (mdistiller's ResNet34 -> ResNet18 and
ResNet50 -> MobileNetV1: `tv_resnet34 -> tv_resnet18`, `tv_resnet50 -> MobileNetV1`), against the PyTorch
references (tests/reference: mdistiller's KD, DKD and ReviewKD, RepDistiller's AT and CRD, which mdistiller
runs unchanged; AT stage by stage), with mdistiller's ImageNet settings (`configs/imagenet/r34_r18/*.yaml`, `r50_mv1/*.yaml`: KD
T 1; DKD alpha 1, beta 0.5, T 1, warm-up 1; ReviewKD on the student's pre-activations, warm-up 1, mid channels
at most 256 for R50 -> MobileNetV1).

The outputs are random tensors of the shapes the two networks produce at 64x64 inputs (stages at 16, 8, 4, 2
pixels; the networks' own parity is tests/test_imagenet_models.py's), so that every field is independent and a
term that reads a wrong one cannot agree by accident. Checked per method: the value, the shapes of the modules
sized from the pair (CRD's embeddings, ReviewKD's ABFs), and the gradient w.r.t. every student output (stem,
each stage output and its pre-activation version, pooled vector, logits): equal to the reference's where the
reference reads that output, zero elsewhere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from ml_collections import ConfigDict

from jaxkd.engine.losses import kd_divergence
from jaxkd.methods import Batch, Probe, get_method
from jaxkd.methods.crd_kernels import sample_contrast_indices
from jaxkd.models import ModelOutput, get_model
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.compile_once import jit_once
from tests.helpers.torch_references import nchw, nhwc
from tests.reference.mdistiller_losses import ReviewKDStudentSide, dkd_loss, dkd_warmup, kd_loss
from tests.reference.repdistiller_crd import CRDLoss
from tests.reference.repdistiller_losses import Attention

BATCH, CLASSES, SIZE, EPOCH = 4, 10, 64, 3
CRD_EXAMPLES, CRD_K = 40, 16
REL = 1e-5
# (teacher, student, ReviewKD's MAX_MID_CHANNEL: mdistiller's 512 default, 256 in r50_mv1/reviewkd.yaml)
PAIRS = [("tv_resnet34", "tv_resnet18", 512), ("tv_resnet50", "MobileNetV1", 256)]
SETTINGS = {"dkd": {"alpha": 1.0, "beta": 0.5, "temperature": 1.0, "warmup": 1},
            "crd": {"nce_k": CRD_K}, "reviewkd": {"warmup": 1, "student_preact": True}}
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def output_shapes(arch: str) -> ModelOutput:
    """The shapes of `arch`'s forward outputs on a batch of 64x64 images (an abstract trace: nothing runs)."""
    model = get_model(arch, CLASSES)

    def forward(images):
        return model.apply(model.init(jax.random.key(0), images), images, method=model.forward)

    return jax.eval_shape(forward, jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), jnp.float32))


def random_output(rng, shapes: ModelOutput) -> ModelOutput:
    """Independent random values of those shapes: the post-ReLU fields non-negative, the pre-activations signed."""
    normal = lambda s, scale=1.0: (scale * rng.standard_normal(s.shape)).astype(np.float32)  # noqa: E731
    return ModelOutput([np.abs(normal(f)) for f in shapes.features], np.abs(normal(shapes.pooled)),
                       normal(shapes.logits, 3.0), np.abs(normal(shapes.stem)),
                       [normal(f) for f in shapes.preact_features])


def torch_leaves(out: ModelOutput) -> ModelOutput:
    """The same ModelOutput as PyTorch leaves (NCHW maps) that record gradients."""
    leaf = lambda x: (nchw(x) if x.ndim == 4 else torch.from_numpy(x)).clone().requires_grad_(True)  # noqa: E731
    return ModelOutput([leaf(f) for f in out.features], leaf(out.pooled), leaf(out.logits), leaf(out.stem),
                       [leaf(f) for f in out.preact_features])


def named_fields(out: ModelOutput) -> dict:
    fields = {"stem": out.stem, "pooled": out.pooled, "logits": out.logits}
    fields.update({f"feature {i}": f for i, f in enumerate(out.features)})
    fields.update({f"preact feature {i}": f for i, f in enumerate(out.preact_features)})
    return fields


@pytest.mark.slow
@pytest.mark.parametrize("teacher_arch,student_arch,max_mid_channels", PAIRS)
def test_terms_and_their_output_gradients_match_the_references(teacher_arch, student_arch, max_mid_channels,
                                                                  rng):
    seed = int(rng.integers(1 << 30))
    student = random_output(rng, output_shapes(student_arch))
    teacher = random_output(rng, output_shapes(teacher_arch))
    train_labels = np.arange(CRD_EXAMPLES, dtype=np.int32) % CLASSES
    index = rng.choice(CRD_EXAMPLES, BATCH, replace=False).astype(np.int32)
    batch = Batch(None, jnp.asarray(train_labels[index]), jnp.asarray(index), jax.random.key(seed),
                  epoch=jnp.asarray(EPOCH, jnp.int32))
    config = ConfigDict({**SETTINGS, "reviewkd": {**SETTINGS["reviewkd"], "max_mid_channels": max_mid_channels}})
    methods = {name: get_method(name, config) for name in ("dkd", "at", "crd", "reviewkd")}
    probe = Probe(student, teacher, batch, train_labels, CLASSES)
    # one compiled program for the inits (op by op they compile ~90 programs); ReviewKD's weights are the
    # reference's below, so its init is traced for the shapes only
    inits = jit_once(lambda key: {name: methods[name].initialize(key, probe) for name in ("dkd", "at", "crd")})(
        jax.random.key(seed))
    inits["reviewkd"] = jax.eval_shape(lambda: methods["reviewkd"].initialize(jax.random.key(seed), probe))

    # the references' modules, sized from the pair as mdistiller's ImageNet configs size them
    torch.manual_seed(seed)
    stage_sizes = lambda out: [f.shape[1] for f in out.preact_features]  # noqa: E731
    review = ReviewKDStudentSide([f.shape[-1] for f in student.preact_features] + [student.pooled.shape[-1]],
                                 [f.shape[-1] for f in teacher.preact_features] + [teacher.pooled.shape[-1]],
                                 [1] + stage_sizes(student)[::-1], [1] + stage_sizes(teacher)[::-1],
                                 max_mid_channels).train()
    review_variables = review.jax_variables()
    assert jax.tree.map(np.shape, inits["reviewkd"].variables) == jax.tree.map(np.shape, review_variables)
    inits["reviewkd"] = inits["reviewkd"]._replace(variables=review_variables)
    crd_params, crd_state = inits["crd"].variables["params"], inits["crd"].state
    crd = CRDLoss(student.pooled.shape[1], teacher.pooled.shape[1], 128, CRD_EXAMPLES, CRD_K)
    with torch.no_grad():
        for name, embed in (("embed_student", crd.embed_s), ("embed_teacher", crd.embed_t)):
            kernel = np.array(crd_params[name]["linear"]["kernel"])
            assert kernel.shape == tuple(embed.linear.weight.shape)[::-1], name  # sized from the pooled dims
            embed.linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
            embed.linear.bias.copy_(torch.from_numpy(np.array(crd_params[name]["linear"]["bias"])))
        crd.contrast.memory_v1.copy_(torch.from_numpy(np.array(crd_state["bank_student"])))
        crd.contrast.memory_v2.copy_(torch.from_numpy(np.array(crd_state["bank_teacher"])))
    contrast_idx = np.asarray(jit_once(sample_contrast_indices, static_argnums=4)(
        batch.rng, batch.labels, batch.index, crd_state, CRD_K))

    def term(name, out):
        if name == "kd":  # the engine's KD term (mdistiller's ImageNet KD: T 1)
            return kd_divergence(out.logits, jnp.asarray(teacher.logits), 1.0)
        return methods[name].term(inits[name].variables, inits[name].state, out, teacher, batch, True).term

    ours = jit_once(lambda out: {name: jax.value_and_grad(lambda o: term(name, o))(out)
                                 for name in ("kd", *methods)})(student)

    s = torch_leaves(student)
    labels = torch.from_numpy(train_labels[index].astype(np.int64))
    references = {
        "kd": kd_loss(s.logits, torch.from_numpy(teacher.logits), 1.0, False),
        "dkd": dkd_warmup(EPOCH, 1) * dkd_loss(s.logits, torch.from_numpy(teacher.logits), labels, 1.0, 0.5,
                                               1.0)[0],
        # stage i against stage i: mdistiller's feats[1:] for the ResNets (for R50 -> MobileNetV1 its feats[1:]
        # shifts the pairing by one stage, MobileNetV1's feats having no stem: docs/models.md)
        "at": sum(Attention(p=2)(s.features, [nchw(f) for f in teacher.features])),
        "crd": crd(s.pooled, torch.from_numpy(teacher.pooled), torch.from_numpy(index.astype(np.int64)),
                   torch.from_numpy(contrast_idx.astype(np.int64))).reshape(()),
        "reviewkd": dkd_warmup(EPOCH, 1) * review(s.preact_features, s.pooled,
                                                  [nchw(f) for f in teacher.preact_features],
                                                  torch.from_numpy(teacher.pooled))[1],
    }
    leaves = named_fields(s)
    for name, loss in references.items():
        what = f"{teacher_arch} -> {student_arch} {name}"
        value, grads = ours[name]
        assert_close_scaled(value, loss.detach().numpy(), REL, what)
        torch_grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)))
        read = [field for field, grad in torch_grads.items() if grad is not None]
        assert read, what
        for field, grad in named_fields(grads).items():
            if torch_grads[field] is None:  # the reference does not read it: neither may jaxkd's term
                assert not np.any(np.asarray(grad)), f"{what}: the term reads {field}, the reference reads {read}"
            else:
                expected = torch_grads[field]
                expected = nhwc(expected) if expected.ndim == 4 else expected.numpy()
                assert_close_scaled(grad, expected, REL, f"{what} d/d {field}")
