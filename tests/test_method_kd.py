"""KD: the KD term (`jaxkd.methods.kd.kd_term`, the engine adds it for every method with a teacher) and its
gradient w.r.t. the student's logits against RepDistiller's `DistillKL` (tests/reference/torch_training.py) at
the KD recipe's temperature; the KD method asks for the teacher and adds no term of its own. The recipe learns in
tests/test_methods_learn.py; 3 train steps against RepDistiller's loop are tests/test_train_parity.py's."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from configs import kd_wrn
from jaxkd.methods import get_method
from jaxkd.methods.kd import kd_term
from jaxkd.models import ModelOutput
from tests.helpers.assertions import assert_close_scaled
from tests.reference.torch_training import DistillKL

REL = 1e-5


def test_kd_term_and_gradient_match_repdistillers_distill_kl(rng):
    loss = kd_wrn.get_config().loss
    student = rng.normal(0, 2, (8, 100)).astype(np.float32)
    teacher = rng.normal(0, 4, (8, 100)).astype(np.float32)
    value, grad = jax.value_and_grad(lambda z: kd_term(ModelOutput([], None, z), ModelOutput([], None, teacher),
                                                       loss))(jnp.asarray(student))
    z_s = torch.tensor(student, requires_grad=True)
    expected = DistillKL(loss.kd_temperature)(z_s, torch.tensor(teacher))
    expected.backward()
    assert expected.item() > 1e-2  # a term that could be wrong
    assert_close_scaled(value, expected.detach().numpy(), REL, "term")
    assert_close_scaled(grad, z_s.grad.numpy(), REL, "d term / d student logits")


def test_the_kd_method_uses_the_teacher_and_adds_no_term_of_its_own(rng):
    method = get_method("kd", kd_wrn.get_config())
    logits = ModelOutput([], None, jnp.asarray(rng.normal(size=(4, 10)).astype(np.float32)))
    assert method.uses_teacher and method.display_name == "KD"
    assert float(method.term({}, {}, logits, logits, None, True).term) == 0.0
