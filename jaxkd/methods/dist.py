"""DIST: knowledge distillation from a stronger teacher (Huang et al., NeurIPS 2022), as the authors'
hunto/image_classification_sota `lib/models/losses/dist_kd.py` `DIST` runs it (docs/methods.md, "What each
term is": DIST).

Softmaxes at temperature tau of student and teacher; the inter-class relation is 1 - the batch mean of the
per-example Pearson correlation over classes, the intra-class relation the same over the batch for each class
(the transposed matrices); the term is tau^2 * (beta * inter + gamma * intra). The authors' CIFAR recipe
(`configs/strategies/distill/dist_cifar.yaml`, kd `dist_t4`) is beta = gamma = 1, tau 4, weighted 2 against a
CE of weight 1: the engine's loss.beta 2, loss.gamma 1 (configs/mdistiller.py).
"""

import jax
import jax.numpy as jnp

from jaxkd.config.specs import non_negative_float, positive_float
from jaxkd.methods.base import Method, TermOutput

COSINE_EPS = 1e-8  # dist_kd.py's cosine_similarity: <a, b> / (|a| |b| + eps)


def _norm(x: jax.Array) -> jax.Array:
    """Row L2 norms; at a zero row 0 with a zero gradient (PyTorch's `norm` backward), not NaN."""
    squares = jnp.sum(jnp.square(x), axis=1)
    positive = squares > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)


def pearson_correlation(a: jax.Array, b: jax.Array) -> jax.Array:
    """(N,) correlations of the rows of two (N, M) matrices: the cosine of the mean-centred rows."""
    a = a - jnp.mean(a, axis=1, keepdims=True)
    b = b - jnp.mean(b, axis=1, keepdims=True)
    return jnp.sum(a * b, axis=1) / (_norm(a) * _norm(b) + COSINE_EPS)


def dist_relations(student_logits: jax.Array, teacher_logits: jax.Array, tau: float):
    """(inter, intra) relation losses at temperature tau, before the tau^2 factor."""
    y_s = jax.nn.softmax(student_logits / tau, axis=1)
    y_t = jax.nn.softmax(teacher_logits / tau, axis=1)
    inter = 1.0 - jnp.mean(pearson_correlation(y_s, y_t))
    intra = 1.0 - jnp.mean(pearson_correlation(y_s.T, y_t.T))
    return inter, intra


class DIST(Method):
    display_name = "DIST"
    uses_teacher = True
    # dist_kd.py DIST(beta, gamma, tau) as kd_loss.py builds it for `dist_t4`: beta = gamma = 1, tau = 4
    defaults = {"beta": 1.0, "gamma": 1.0, "tau": 4.0}
    specs = {"beta": non_negative_float, "gamma": non_negative_float, "tau": positive_float}

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        s = self.settings
        inter, intra = dist_relations(student.logits, teacher.logits, s["tau"])
        scale = s["tau"] ** 2
        return TermOutput(scale * (s["beta"] * inter + s["gamma"] * intra), metrics={"inter": inter, "intra": intra})
