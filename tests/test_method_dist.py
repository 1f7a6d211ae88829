"""DIST: the term (inter- and intra-class Pearson relations at tau, times tau^2) and its gradient against the
PyTorch reference of the authors' `DIST` (tests/reference/mdistiller_losses.py), a uniform row included."""

import numpy as np
import pytest
import torch
from ml_collections import ConfigDict

from jaxkd.methods import get_method
from jaxkd.methods.dist import DIST
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.method_inputs import logit_term_and_grad
from tests.reference.mdistiller_losses import dist_loss

REL = 1e-5


@pytest.mark.parametrize("beta, gamma, tau", [(1.0, 1.0, 4.0), (2.0, 0.5, 1.0)])
def test_dist_matches_the_authors_loss(beta, gamma, tau, rng):
    """The authors' CIFAR setting (beta = gamma = 1, tau 4) and another; one student row constant: with 8
    classes its softmax is exactly 1/8, its centred row exactly 0, its correlation 0 with PyTorch's zero
    gradient through the norm (not NaN)."""
    student = rng.normal(0, 2, (6, 8)).astype(np.float32)
    teacher = rng.normal(0, 3, (6, 8)).astype(np.float32)
    student[3] = 0.7
    method = get_method("dist", ConfigDict({"dist": dict(DIST.defaults, beta=beta, gamma=gamma, tau=tau)}))

    value, metrics, grad = logit_term_and_grad(method, student, teacher)
    z_s = torch.tensor(student, requires_grad=True)
    ref, inter, intra = dist_loss(z_s, torch.tensor(teacher), beta, gamma, tau)
    ref.backward()
    assert_close_scaled(value, ref.detach().numpy(), REL, "term")
    assert_close_scaled(metrics["inter"], inter.detach().numpy(), REL, "inter")
    assert_close_scaled(metrics["intra"], intra.detach().numpy(), REL, "intra")
    assert_close_scaled(grad, z_s.grad.numpy(), REL, "grad")
    assert inter.item() > 1e-3 and intra.item() > 1e-3 and np.all(np.isfinite(np.asarray(grad)))
    uniform = torch.softmax(torch.tensor(student[3]) / tau, 0)
    assert torch.equal(uniform - uniform.mean(), torch.zeros(8))  # the zero-norm case is exercised


def test_defaults_are_the_authors_cifar_setting():
    assert DIST.defaults == {"beta": 1.0, "gamma": 1.0, "tau": 4.0}  # kd_loss.py `dist_t4`: DIST(1, 1, tau=4)
