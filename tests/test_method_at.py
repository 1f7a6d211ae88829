"""AT: the summed attention term and its gradient against RepDistiller's `Attention`
(tests/reference/repdistiller_losses.py), for p = 2 and p = 4 and for stage outputs of other spatial sizes
(pooled to the smaller); a zero feature map stays finite. The config learns in tests/test_methods_learn.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import at_wrn
from jaxkd.methods import get_method
from jaxkd.methods.at import AT
from jaxkd.models import ModelOutput
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.compile_once import jit_once
from tests.helpers.torch_references import nchw, nhwc
from tests.reference.repdistiller_losses import Attention

REL = 1e-5  # float32 parity: max |jax - torch| <= REL * max |torch| for every compared tensor


def outputs(*features) -> ModelOutput:
    return ModelOutput(list(features), None, None)


def random_feature(rng, shape_nhwc) -> np.ndarray:
    return rng.normal(size=shape_nhwc).astype(np.float32)


@pytest.mark.parametrize("student_shapes, teacher_shapes", [
    ([(4, 32, 32, 16), (4, 16, 16, 32), (4, 8, 8, 64)], [(4, 32, 32, 32), (4, 16, 16, 64), (4, 8, 8, 128)]),
    ([(3, 10, 10, 8), (3, 6, 6, 8), (3, 7, 7, 4)], [(3, 6, 6, 5), (3, 10, 10, 6), (3, 7, 7, 4)]),  # pooling
])
@pytest.mark.parametrize("p", [2, 4])
def test_at_matches_pytorch_attention(student_shapes, teacher_shapes, p, rng):
    """The summed term and its gradient w.r.t. every student feature, against RepDistiller's Attention(p);
    p = 2 is the recipe's (the default), p = 4 is read from `config.at.p`."""
    f_s = [random_feature(rng, shape) for shape in student_shapes]
    f_t = [random_feature(rng, shape) * 2 + 0.5 for shape in teacher_shapes]
    x = [nchw(f).requires_grad_(True) for f in f_s]
    loss_torch = sum(Attention(p=p)(x, [nchw(f) for f in f_t]))
    loss_torch.backward()

    config = at_wrn.get_config()
    if p != 2:
        config.at.p = p
    method = get_method("at", config)
    assert isinstance(method, AT) and method.uses_teacher and method.settings == {"p": p}

    def loss_fn(features):
        return method.term({}, {}, outputs(*features), outputs(*map(jnp.asarray, f_t)), None, True).term

    loss, grads = jit_once(jax.value_and_grad(loss_fn))([jnp.asarray(f) for f in f_s])  # one compile
    assert loss == pytest.approx(loss_torch.item(), rel=REL)
    for i, (grad, reference) in enumerate(zip(grads, x)):
        assert_close_scaled(grad, nhwc(reference.grad), REL, f"d loss / d student feature {i}")


def test_at_of_a_zero_feature_is_finite():
    """F.normalize's eps: an all-zero map gives a zero attention vector and finite gradients."""
    zero, other = jnp.zeros((2, 4, 4, 3)), jnp.ones((2, 4, 4, 3))
    method = get_method("at", None)
    loss, grad = jax.value_and_grad(lambda f: method.term({}, {}, outputs(f), outputs(other), None, True).term)(zero)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))
