"""NKD: the term (target and non-target parts) and its gradient against the PyTorch reference of cls_KD's
`NKDLoss` (tests/reference/cls_kd_nkd.py) on logits shaped like a homogeneous and a heterogeneous pair's; the label
it reads under SaliencyMix (the reference's argmax of the mixed label); its recipe: tests/test_recipes.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from ml_collections import ConfigDict

from jaxkd.methods import Batch, get_method
from jaxkd.methods.nkd import NKD
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.method_inputs import logit_term_and_grad
from tests.reference.cls_kd_nkd import nkd_loss

REL = 1e-5
# (batch, classes, the teacher's logit scale): the pairs' logits differ only in their spread, a same-family
# teacher close to its student's, a stronger (heterogeneous) teacher far more confident
PAIRS = {"homogeneous": (8, 100, 2.0), "heterogeneous": (4, 100, 6.0)}


def nkd_method(**settings) -> NKD:
    return get_method("nkd", ConfigDict({"nkd": dict(NKD.defaults, **settings)}))


@pytest.mark.parametrize("pair, temperature, gamma", [("homogeneous", 3.0, 3.5), ("heterogeneous", 3.0, 3.5),
                                                     ("homogeneous", 1.0, 1.5)])
def test_nkd_matches_cls_kd(pair, temperature, gamma, rng):
    """The CIFAR-100 setting (T 3, gamma 3.5) and NKDLoss's own defaults (T 1, gamma 1.5): the term, both parts
    (the metrics) and the gradient w.r.t. the student's logits."""
    batch_size, classes, teacher_scale = PAIRS[pair]
    student = rng.normal(0, 2, (batch_size, classes)).astype(np.float32)
    teacher = rng.normal(0, teacher_scale, (batch_size, classes)).astype(np.float32)
    labels = rng.integers(0, classes, batch_size)
    teacher[0, labels[0]] += 40.0  # a teacher all but certain of the target: its non-target softmax still counts
    batch = Batch(None, jnp.asarray(labels, jnp.int32), None, None)
    method = nkd_method(temperature=temperature, gamma=gamma)
    compiled = jax.jit(lambda s: logit_term_and_grad(method, s, teacher, batch))
    value, metrics, grad = compiled(student)
    z_s = torch.tensor(student, requires_grad=True)
    ref, ref_target, ref_non_target = nkd_loss(z_s, torch.tensor(teacher), torch.tensor(labels), temperature, gamma)
    ref.backward()
    assert_close_scaled(value, ref.detach().numpy(), REL, "term")
    assert_close_scaled(metrics["target"], ref_target.detach().numpy(), REL, "target part")
    assert_close_scaled(metrics["non_target"], ref_non_target.detach().numpy(), REL, "non-target part")
    assert_close_scaled(grad, z_s.grad.numpy(), REL, "grad")
    assert abs(ref_target.item()) > 1e-4 and abs(ref_non_target.item()) > 1e-2
    # the target's column takes no part in the non-target softmaxes: moving it moves only the target part
    shifted = student.copy()
    shifted[np.arange(batch_size), labels] += 5.0
    _, shifted_metrics, _ = compiled(shifted)
    assert float(shifted_metrics["non_target"]) == pytest.approx(float(metrics["non_target"]), rel=1e-5)
    assert float(shifted_metrics["target"]) != pytest.approx(float(metrics["target"]), rel=1e-3)


def test_nkd_under_saliencymix_reads_the_label_of_the_larger_weight(rng):
    """Example i shows its own image with a box from example partners[i]: cls_KD reduces such a mixed label,
    lam * onehot(own) + (1 - lam) * onehot(partner's), to its argmax, which the reference computes from that very
    matrix; lam above, below and at 0.5 (a tie: the smaller class index), partners of the same label included."""
    batch_size, classes = 8, 10
    student = rng.normal(0, 2, (batch_size, classes)).astype(np.float32)
    teacher = rng.normal(0, 3, (batch_size, classes)).astype(np.float32)
    labels = np.array([3, 7, 1, 9, 3, 0, 5, 2])
    partners = np.array([1, 0, 3, 2, 0, 6, 5, 4])  # example 4's partner (0) and example 6's (itself) share its label
    lam = np.array([0.7, 0.3, 0.5, 0.5, 0.2, 0.6, 0.4, 0.5], np.float32)
    batch = Batch(None, jnp.asarray(labels, jnp.int32), None, None, jnp.asarray(partners, jnp.int32),
                  jnp.asarray(lam))
    value, _, grad = jax.jit(lambda s: logit_term_and_grad(nkd_method(), s, teacher, batch))(student)
    mixed = np.zeros((batch_size, classes), np.float32)
    mixed[np.arange(batch_size), labels] += lam
    mixed[np.arange(batch_size), labels[partners]] += 1.0 - lam
    z_s = torch.tensor(student, requires_grad=True)
    ref, _, _ = nkd_loss(z_s, torch.tensor(teacher), torch.tensor(mixed), 3.0, 3.5)
    ref.backward()
    assert_close_scaled(value, ref.detach().numpy(), REL, "mixed nkd")
    assert_close_scaled(grad, z_s.grad.numpy(), REL, "mixed nkd grad")
    unmixed, _, _ = nkd_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), 3.0, 3.5)
    assert abs(unmixed.item() - ref.item()) > 1e-3  # the partners' labels count
