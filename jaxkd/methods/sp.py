"""SP: similarity-preserving distillation (Tung & Mori, ICCV 2019), as RepDistiller's `distiller_zoo/SP.py`
`Similarity` runs it on the last stage output, feat[-2] (docs/methods.md, "What each term is": SP; recipe gamma 1,
alpha 0, beta 3000).

Each side's batch similarity G = f f^T of the flattened features, rows L2-normalized; the term is
sum((G_t - G_s)^2) / B^2. G compares examples with examples, so any pair of models fits."""

import jax
import jax.numpy as jnp

from jaxkd.methods.base import Method, TermOutput
from jaxkd.methods.functional import normalize


def similarity(feature: jax.Array) -> jax.Array:
    """(B, ...) -> (B, B): `F.normalize(f @ f.T)` of the flattened feature (the order of the flattening does
    not change a dot product, so NHWC serves as NCHW)."""
    flat = feature.reshape(feature.shape[0], -1)
    return normalize(jnp.matmul(flat, flat.T, precision=jax.lax.Precision.HIGHEST), axis=1)


def similarity_loss(student_feature: jax.Array, teacher_feature: jax.Array) -> jax.Array:
    """`Similarity.similarity_loss`: the squared Frobenius distance of the two similarities over B^2."""
    batch = student_feature.shape[0]
    diff = similarity(teacher_feature) - similarity(student_feature)
    return jnp.sum(jnp.square(diff)) / (batch * batch)


class SP(Method):
    display_name = "SP"
    uses_teacher = True

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        return TermOutput(similarity_loss(student.features[-1], teacher.features[-1]))
