"""SDD: its term (KD and DKD bases, scales 1,2,4 / 1,2 / 1, DKD's warm-up) and its gradients w.r.t. the student's
last map and classifier, against the PyTorch transcription of the authors' code
(tests/reference/sdd_cvpr2024_sdd.py) on a homogeneous and a heterogeneous pair; the pairs and settings it
refuses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from ml_collections import ConfigDict

from jaxkd.config import recipes
from jaxkd.errors import UserError
from jaxkd.methods import Batch, Probe, get_method
from jaxkd.methods.sdd import SDD
from jaxkd.models import ModelOutput
from jaxkd.tools.published import published_for
from jaxkd.tools.report import method_label
from tests.helpers.assertions import assert_close_scaled
from tests.reference import mdistiller_losses
from tests.reference import sdd_cvpr2024_sdd as reference

REL = 1e-5
BATCH, CLASSES = 8, 10
TORCH_SCALES = {"1,2,4": "[1,2,4]", "1,2": "[1,2]", "1": "[1]"}
# (student map NHWC, teacher map NHWC): the same shapes; other channels and sizes (6x6 pools to 4x4 with
# overlapping cells, as PyTorch's adaptive pooling)
PAIRS = {"homogeneous": ((BATCH, 8, 8, 16), (BATCH, 8, 8, 16)),
         "heterogeneous": ((BATCH, 6, 6, 24), (BATCH, 8, 8, 32))}


def random_side(rng, map_shape, scale):
    # log-normal activations: regions that differ from the whole map, so local and global predictions differ
    feature_map = rng.lognormal(0, 1.5, map_shape).astype(np.float32)
    kernel = rng.normal(0, scale, (map_shape[-1], CLASSES)).astype(np.float32)
    bias = rng.normal(0, 0.5, CLASSES).astype(np.float32)
    return feature_map, kernel, bias


def output(feature_map, kernel, bias) -> ModelOutput:
    pooled = jnp.mean(feature_map, axis=(1, 2))
    return ModelOutput([], pooled, pooled @ kernel + bias, pooled_map=feature_map, classifier_kernel=kernel,
                       classifier_bias=bias)


def torch_patch_score(side, M):
    feature_map, kernel, bias = (torch.tensor(a, requires_grad=True) for a in side)
    score = reference.patch_score(feature_map.permute(0, 3, 1, 2), kernel.T, bias, M)
    logits = feature_map.mean(dim=(1, 2)) @ kernel + bias
    return (feature_map, kernel, bias), score, logits


def labels_with_both_kinds(rng, teacher_scores: np.ndarray) -> np.ndarray:
    """Labels the teacher gets right on the global region for half the examples and on a local region (only) for
    others, so that consistent and complementary regions both occur."""
    labels = rng.integers(0, CLASSES, BATCH)
    predictions = np.argmax(teacher_scores, axis=1)  # (B, N)
    for i in range(BATCH):
        differing = np.flatnonzero(predictions[i] != predictions[i, 0])
        labels[i] = predictions[i, 0] if i % 2 == 0 or not differing.size else predictions[i, rng.choice(differing)]
    return labels


def sdd_setup(rng, pair: str, scales: str):
    student = random_side(rng, PAIRS[pair][0], 0.5)
    teacher = random_side(rng, PAIRS[pair][1], 0.5)
    with torch.no_grad():
        teacher_scores = reference.patch_score(torch.tensor(teacher[0]).permute(0, 3, 1, 2),
                                               torch.tensor(teacher[1]).T, torch.tensor(teacher[2]),
                                               TORCH_SCALES[scales] if scales != "1" else "[1,2,4]").numpy()
    return student, teacher, labels_with_both_kinds(rng, teacher_scores)


def jax_term_and_grads(method, student, teacher, labels, epoch):
    batch = Batch(jnp.zeros((BATCH, 1, 1, 1)), jnp.asarray(labels, jnp.int32), jnp.arange(BATCH), jax.random.key(0),
                  epoch=epoch)

    def term(student_arrays):
        out = method.term({}, {}, output(*student_arrays), output(*map(jnp.asarray, teacher)), batch, True)
        return out.term, out.metrics

    (value, metrics), grads = jax.jit(jax.value_and_grad(term, has_aux=True))(tuple(map(jnp.asarray, student)))
    return value, metrics, grads


def torch_term_and_grads(base, scales, student, teacher, labels, epoch, settings):
    (s_map, s_kernel, s_bias), s_score, s_logits = torch_patch_score(student, TORCH_SCALES[scales])
    with torch.no_grad():
        _, t_score, t_logits = torch_patch_score(teacher, TORCH_SCALES[scales])
    target = torch.tensor(labels)
    temperature = settings["temperature"]
    if base == "kd":  # SDD_KD.forward_train (kd_loss_weight is the engine's beta)
        loss = (reference.kd_loss(s_logits, t_logits, temperature) if scales == "1"
                else reference.sdd_kd_loss(s_score, t_score, temperature, target))
    else:  # SDD_DKD.forward_train
        alpha, beta = settings["dkd_alpha"], settings["dkd_beta"]
        warmup = min(epoch / settings["warmup"], 1.0)
        loss = warmup * (mdistiller_losses.dkd_loss(s_logits, t_logits, target, alpha, beta, temperature)[0]
                         if scales == "1" else reference.multi_dkd(s_score, t_score, target, alpha, beta, temperature))
    loss.backward()
    return loss.item(), (s_map.grad.numpy(), s_kernel.grad.numpy(), s_bias.grad.numpy())


CASES = [("kd", "1,2,4", "homogeneous", 1), ("kd", "1,2", "heterogeneous", 1), ("kd", "1", "heterogeneous", 1),
         ("dkd", "1,2,4", "heterogeneous", 10), ("dkd", "1", "homogeneous", 30)]


@pytest.mark.parametrize("base,scales,pair,epoch", CASES)
def test_term_and_gradients_match_the_authors_code(base, scales, pair, epoch, rng):
    settings = dict(SDD.defaults, base=base, scales=scales, temperature=3.0)
    if base == "dkd":
        settings.update(dkd_alpha=1.5, dkd_beta=6.0, warmup=20)
    method = get_method("sdd", ConfigDict({"sdd": settings}))
    student, teacher, labels = sdd_setup(rng, pair, scales)
    value, metrics, grads = jax_term_and_grads(method, student, teacher, labels, epoch)
    expected, expected_grads = torch_term_and_grads(base, scales, student, teacher, labels, epoch, settings)
    assert_close_scaled(value, expected, REL, "term")
    for what, grad, expected_grad in zip(("map", "kernel", "bias"), grads, expected_grads):
        assert_close_scaled(grad, expected_grad, REL, f"gradient w.r.t. the student's {what}")
    if scales != "1":  # both kinds of region occur, so the weights are exercised
        assert 0.0 < float(metrics["complementary"]) < 1.0


def probe(student_map, student_classes, teacher_map=(2, 8, 8, 4), teacher_classes=10, fields=True):
    def side(map_shape, classes):
        feature_map = jnp.zeros(map_shape)
        kernel, bias = jnp.zeros((map_shape[-1], classes)), jnp.zeros(classes)
        out = output(feature_map, kernel, bias)
        return out if fields else out._replace(pooled_map=None, classifier_kernel=None, classifier_bias=None)
    batch = Batch(jnp.zeros((2, 1, 1, 1)), jnp.zeros(2, jnp.int32), jnp.arange(2), jax.random.key(0))
    return Probe(side(student_map, student_classes), side(teacher_map, teacher_classes), batch, np.zeros(2), 10)


def test_refuses_what_it_cannot_serve():
    method = get_method("sdd", ConfigDict({"sdd": dict(SDD.defaults)}))
    with pytest.raises(UserError, match="5 classes and the teacher 10"):
        method.initialize(jax.random.key(0), probe((2, 4, 4, 3), 5))
    with pytest.raises(UserError, match="no last feature map"):
        method.initialize(jax.random.key(0), probe((2, 4, 4, 3), 10, fields=False))
    with pytest.raises(UserError, match="only with --config.sdd.base=dkd"):
        get_method("sdd", ConfigDict({"sdd": dict(SDD.defaults, dkd_beta=6.0)}))
    with pytest.raises(UserError, match="logit_standardization"):
        get_method("sdd", ConfigDict({"sdd": dict(SDD.defaults), "loss": {"logit_standardization": True}}))
    method.initialize(jax.random.key(0), probe((2, 4, 4, 3), 10))
    assert method.metric_names == ("complementary",)


def test_recipes_are_the_authors_cifar_settings_and_the_report_names_them_as_the_readme():
    # configs/cifar100/sdd_kd/*.yaml over CFG.KD (CE 0.1, KD 0.9, T 4); teacher_resnet32x4.sh: --M [1,2] for
    # res32x4_res8x4 (SDD_KD), [1,2,4] for res32x4_shuv1
    sdd_kd = recipes.mdistiller("resnet32x4", "resnet8x4", "sdd_kd")
    assert (sdd_kd.method, sdd_kd.loss.gamma, sdd_kd.loss.alpha, sdd_kd.loss.beta) == ("sdd", 0.1, 0.0, 0.9)
    assert (sdd_kd.sdd.base, sdd_kd.sdd.scales, sdd_kd.sdd.temperature) == ("kd", "1,2", 4.0)
    assert recipes.mdistiller("resnet32x4", "ShuffleV1", "sdd_kd").sdd.scales == "1,2,4"
    # configs/cifar100/sdd_dkd/wrn40_2_wrn_16_2.yaml: DKD.BETA 6.0 over CFG.DKD (CE 1, alpha 1, T 4); --warmup 20
    sdd_dkd = recipes.mdistiller("wrn_40_2", "wrn_16_2", "sdd_dkd")
    assert (sdd_dkd.loss.gamma, sdd_dkd.loss.alpha, sdd_dkd.loss.beta) == (1.0, 0.0, 1.0)
    assert dict(sdd_dkd.sdd) == {"base": "dkd", "scales": "1,2,4", "temperature": 4.0, "dkd_alpha": 1.0,
                                 "dkd_beta": 6.0, "warmup": 20}
    assert recipes.mdistiller("wrn_40_2", "ShuffleV1", "sdd_dkd").sdd.dkd_beta == 8.0  # its yaml sets no BETA
    # SDD README, cifar100.png: SD-KD "76.30(+2.23)" and SD-DKD "77.30(+0.85)" for ResNet32x4 -> ShufleNetV1
    labels = [method_label(recipes.mdistiller("resnet32x4", "ShuffleV1", m).to_dict()) for m in ("sdd_kd", "sdd_dkd")]
    assert labels == ["sdd", "sdd+dkd"]
    assert [[p.top1 for p in published_for("rd_resnet32x4", "ShuffleV1", label, False)] for label in labels] == [
        [76.30], [77.30]]
    assert [p.top1 for p in published_for("ResNet50", "vgg8", "sdd+dkd", False)] == [75.86]
