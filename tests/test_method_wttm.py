"""WTTM: the term (each example's KL to the power-transformed teacher, weighted by the teacher's power sum) and its
gradient against the PyTorch reference of zkxufo/TTM's `WTTM` (tests/reference/ttm_wttm.py) on logits shaped like a
homogeneous and a heterogeneous pair's, a teacher probability underflowing to 0 included (its recipe:
tests/test_recipes.py)."""

import numpy as np
import pytest
import torch
from ml_collections import ConfigDict

from jaxkd.methods import get_method
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.method_inputs import logit_term_and_grad
from tests.reference.ttm_wttm import wttm_loss

REL = 1e-5
# (batch, classes, the teacher's logit scale): a same-family teacher close to its student's spread, a stronger
# (heterogeneous) teacher far more confident
PAIRS = {"homogeneous": (8, 100, 2.0), "heterogeneous": (4, 100, 6.0)}


@pytest.mark.parametrize("exponent", [0.2, 0.5])
@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_wttm_matches_the_authors_loss(pair, exponent, rng):
    """The recipe's exponent 0.2 and another: the term, its gradient w.r.t. the student's logits, the batch means of
    the weights and of the unweighted KLs (TTM's loss, `TTM(l)`). Row 0's teacher is so sure of one class that its
    other probabilities underflow to 0 in float32 (PyTorch's pow gives 0, kl_div's 0 log 0 counts 0)."""
    batch_size, classes, teacher_scale = PAIRS[pair]
    student = rng.normal(0, 2, (batch_size, classes)).astype(np.float32)
    teacher = rng.normal(0, teacher_scale, (batch_size, classes)).astype(np.float32)
    teacher[0, 0] += 200.0
    method = get_method("wttm", ConfigDict({"wttm": {"exponent": exponent}}))

    value, metrics, grad = logit_term_and_grad(method, student, teacher)
    z_s = torch.tensor(student, requires_grad=True)
    ref, norm, _ = wttm_loss(z_s, torch.tensor(teacher), exponent)
    ref.backward()
    assert torch.softmax(torch.tensor(teacher[0]), 0)[1:].eq(0).all()  # the underflow is exercised
    assert_close_scaled(value, ref.detach().numpy(), REL, "term")
    assert_close_scaled(grad, z_s.grad.numpy(), REL, "grad")
    assert_close_scaled(metrics["weight"], norm.mean().numpy(), REL, "weight")
    ttm, _, _ = wttm_loss(torch.tensor(student), torch.tensor(teacher), exponent, weighted=False)
    assert_close_scaled(metrics["ttm"], ttm.numpy(), REL, "ttm")
    assert norm[0].item() == pytest.approx(1.0) and norm.max().item() > 1.5  # the weights differ by example
    assert abs(value - float(metrics["weight"]) * float(metrics["ttm"])) > 1e-3 * abs(value)  # per-example weights
