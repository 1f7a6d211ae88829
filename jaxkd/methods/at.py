"""AT: attention transfer (Zagoruyko & Komodakis, ICLR 2017), as RepDistiller's `distiller_zoo/AT.py`
`Attention` runs it (docs/methods.md, "What each term is": AT; recipe gamma 1, alpha 0, beta 1000).

A feature's attention map is the channel mean of |f|^p, flattened and L2-normalized; the term sums over the
stage outputs the mean squared difference of the student's and the teacher's maps."""

import jax
import jax.numpy as jnp

from jaxkd.config.specs import positive_int
from jaxkd.methods.base import Method, TermOutput
from jaxkd.methods.functional import normalize
from jaxkd.methods.pooling import pool_to_common_size


def attention_map(feature: jax.Array, p: int, eps: float = 1e-12) -> jax.Array:
    """(B, H, W, C) -> (B, H*W): `F.normalize(f.pow(p).mean(1).view(B, -1))`, v / max(||v||_2, eps)."""
    mean = jnp.mean(feature ** p, axis=-1).reshape(feature.shape[0], -1)
    return normalize(mean, axis=1, eps=eps)


def attention_loss(student_feature: jax.Array, teacher_feature: jax.Array, p: int) -> jax.Array:
    """`Attention.at_loss`: the larger map is first pooled down to the smaller one's size."""
    student_feature, teacher_feature = pool_to_common_size(student_feature, teacher_feature)
    return jnp.mean(jnp.square(attention_map(student_feature, p) - attention_map(teacher_feature, p)))


class AT(Method):
    display_name = "AT"
    uses_teacher = True
    defaults = {"p": 2}  # the power of the attention map (RepDistiller's Attention(p=2))
    specs = {"p": positive_int}

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        losses = [attention_loss(s, t, self.settings["p"]) for s, t in zip(student.features, teacher.features)]
        return TermOutput(sum(losses), metrics={f"stage{i + 1}": loss for i, loss in enumerate(losses)})
