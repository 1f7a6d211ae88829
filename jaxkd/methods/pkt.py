"""PKT: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), as RepDistiller's `distiller_zoo/PKT.py`
`PKT.cosine_similarity_loss` runs it on the pooled penultimate vectors, feat[-1] (docs/methods.md, "What each
term is": PKT; recipe gamma 1, alpha 0, beta 30000).

Each side's cosine similarities between the examples of the batch, moved to [0, 1] and normalized per row into
conditional probabilities; the term is the mean over the B x B entries of p_t log((p_t + eps) / (p_s + eps))."""

import jax
import jax.numpy as jnp

from jaxkd.methods.base import Method, TermOutput

EPS = 1e-7  # PKT.cosine_similarity_loss(eps=0.0000001)


def conditional_probabilities(vectors: jax.Array) -> jax.Array:
    """(B, D) -> (B, B): rows v / (||v|| + eps) (a NaN set to 0, as the reference does), their cosine
    similarities (s + 1) / 2, each row divided by its sum."""
    unit = vectors / (jnp.sqrt(jnp.sum(jnp.square(vectors), axis=1, keepdims=True)) + EPS)
    unit = jnp.where(jnp.isnan(unit), 0.0, unit)
    cosine = (jnp.matmul(unit, unit.T, precision=jax.lax.Precision.HIGHEST) + 1.0) / 2.0
    return cosine / jnp.sum(cosine, axis=1, keepdims=True)


def pkt_loss(student_vectors: jax.Array, teacher_vectors: jax.Array) -> jax.Array:
    p_s = conditional_probabilities(student_vectors)
    p_t = conditional_probabilities(teacher_vectors)
    return jnp.mean(p_t * jnp.log((p_t + EPS) / (p_s + EPS)))


class PKT(Method):
    display_name = "PKT"
    uses_teacher = True

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        return TermOutput(pkt_loss(student.pooled, teacher.pooled))
