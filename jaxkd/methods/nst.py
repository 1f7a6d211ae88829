"""NST: neuron selectivity transfer (Huang & Wang, 2017), as RepDistiller's `distiller_zoo/NST.py` `NSTLoss`
runs it on every stage output, feat[1:-1] (docs/methods.md, "What each term is": NST; recipe gamma 1, alpha 0,
beta 50).

Per stage, each channel's map is flattened over H*W and L2-normalized; the term is the sum over stages of the
squared MMD with the polynomial kernel k(a, b) = (a.b)^2 between the student's and the teacher's channels:
mean k(t, t) + mean k(s, s) - 2 mean k(s, t). Channel counts may differ; maps of different sizes are pooled to
the smaller first; with unequal stage counts the first min(S, T) stages are paired (RepDistiller's `zip`)."""

import jax
import jax.numpy as jnp

from jaxkd.methods.base import Method, TermOutput
from jaxkd.methods.functional import normalize
from jaxkd.methods.pooling import pool_to_common_size


def channel_maps(feature: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H*W, C), each channel's map L2-normalized (`F.normalize(f.view(B, C, -1), dim=2)`)."""
    return normalize(feature.reshape(feature.shape[0], -1, feature.shape[-1]), axis=1)


def mean_poly_kernel(a: jax.Array, b: jax.Array) -> jax.Array:
    """`NSTLoss.poly_kernel(a, b).mean()`: the mean over batch and channel pairs of (a_i . b_j)^2."""
    return jnp.mean(jnp.square(jnp.einsum("bpi,bpj->bij", a, b, precision=jax.lax.Precision.HIGHEST)))


def nst_loss(student_feature: jax.Array, teacher_feature: jax.Array) -> jax.Array:
    student_feature, teacher_feature = pool_to_common_size(student_feature, teacher_feature)
    s, t = channel_maps(student_feature), channel_maps(teacher_feature)
    return mean_poly_kernel(t, t) + mean_poly_kernel(s, s) - 2.0 * mean_poly_kernel(s, t)


class NST(Method):
    display_name = "NST"
    uses_teacher = True

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        losses = [nst_loss(s, t) for s, t in zip(student.features, teacher.features)]
        return TermOutput(sum(losses), metrics={f"stage{i + 1}": loss for i, loss in enumerate(losses)})
