"""KDSVD: self-supervised knowledge distillation using singular value decomposition (Lee et al., ECCV 2018), as
RepDistiller's `distiller_zoo/KDSVD.py` `KDSVD` runs it on every stage output, feat[1:-1] (docs/methods.md, "What
each term is": KDSVD). RepDistiller's script gives it no weight: its recipe is mdistiller's,
`configs/mdistiller.py:T,S,kdsvd` (docs/methods.md, "Where jaxkd differs": KDSVD).

Each stage output, as a (H*W, C) matrix per example, is decomposed; the teacher keeps its first right singular
vector (k = 1), the student its first k + 3, of which the one most aligned with the teacher's (largest |cos|) is
kept, sign-matched. Between consecutive stages, the RBF exp(-(v_i[c] - v_{i-1}[c'])^2 / 8) over all channel
pairs is compared, squared differences summed over channels and divided by B. The student's and the teacher's
vectors are multiplied, so every paired stage needs the same channels on both sides.

The sign of the teacher's vector is not fixed by the SVD (RepDistiller takes whatever `torch.svd` returns, and
the RBF between two stages depends on it); jaxkd makes each teacher vector's largest-magnitude component
positive, so that the term is the same on every device (docs/methods.md, "Where jaxkd differs": KDSVD)."""

import jax
import jax.numpy as jnp

from jaxkd.config.specs import positive_int
from jaxkd.errors import UserError
from jaxkd.methods.base import Method, MethodInit, TermOutput
from jaxkd.methods.functional import normalize

RBF_SCALE = 8.0  # exp(-d^2 / 8)


def finite_or_zero(x: jax.Array) -> jax.Array:
    """`KDSVD.removenan`: non-finite entries replaced by 0."""
    return jnp.where(jnp.isfinite(x), x, 0.0)


def leading_right_vectors(feature: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """`KDSVD.svd(feat, n)`'s (s, v): of x = feature as (B, H*W, C), the first n singular values normalized to a
    unit vector, (B, n), and right singular vectors, each L2-normalized, (B, C, n)."""
    x = feature.reshape(feature.shape[0], -1, feature.shape[-1])
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # float32 at least (float64 where the tests enable it)
    # The same decomposition either way; XLA's CPU SVD of a tall matrix is ~30x slower than of its transpose.
    if x.shape[1] > x.shape[2]:  # H*W > C: x^T = V S U^T, V its left singular vectors
        v, s, _ = jnp.linalg.svd(jnp.swapaxes(x, 1, 2), full_matrices=False)
    else:
        _, s, vh = jnp.linalg.svd(x, full_matrices=False)
        v = jnp.swapaxes(vh, 1, 2)
    v = finite_or_zero(v)[:, :, :n]
    return normalize(finite_or_zero(s)[:, :n], axis=1), normalize(v, axis=1)


def canonical_sign(v: jax.Array) -> jax.Array:
    """(B, C, n) with each vector's largest-magnitude component made positive."""
    largest = jnp.take_along_axis(v, jnp.argmax(jnp.abs(v), axis=1, keepdims=True), axis=1)
    return v * jnp.where(largest < 0, -1.0, 1.0)


def aligned(v_student: jax.Array, v_teacher: jax.Array) -> jax.Array:
    """`KDSVD.align_rsv`: of the student's vectors (B, C, m), the one with the largest |cos| to the teacher's
    (B, C, 1), times the sign of that cosine: (B, C, 1)."""
    cosine = jnp.einsum("bcm,bcn->bmn", v_student, v_teacher, precision=jax.lax.Precision.HIGHEST)
    largest = jnp.max(jnp.abs(cosine), axis=1, keepdims=True)
    mask = jax.lax.stop_gradient(jnp.where(largest == jnp.abs(cosine), jnp.sign(cosine), 0.0))
    return jnp.einsum("bcm,bmn->bcn", v_student, mask, precision=jax.lax.Precision.HIGHEST)


def rbf(v: jax.Array, v_previous: jax.Array) -> jax.Array:
    """(B, C_i, 1), (B, C_{i-1}, 1) -> (B, C_i, C_{i-1}, 1): exp(-(v[c] - v_previous[c'])^2 / 8)."""
    return jnp.exp(-jnp.square(v[:, :, None, :] - v_previous[:, None, :, :]) / RBF_SCALE)


def kdsvd_losses(student_features, teacher_features, k: int) -> list:
    """`KDSVD.forward`: one loss per pair of consecutive stages (len - 1 of them)."""
    losses, previous = [], None
    batch = student_features[0].shape[0]
    for f_s, f_t in zip(student_features, teacher_features):
        s_t, v_t = leading_right_vectors(f_t, k)
        _, v_s = leading_right_vectors(f_s, k + 3)
        v_t = canonical_sign(v_t)
        scale = s_t[:, None, :]
        v_s, v_t = aligned(v_s, v_t) * scale, v_t * scale
        if previous is not None:
            difference = jnp.square(rbf(v_s, previous[0]) - rbf(v_t, previous[1]))
            losses.append(jnp.sum(finite_or_zero(difference)) / batch)
        previous = (v_s, v_t)
    return losses


def check_channels(student, teacher) -> None:
    """RepDistiller's KDSVD multiplies the paired stages' vectors: their channels must agree."""
    for i, (f_s, f_t) in enumerate(zip(student.features, teacher.features)):
        if f_s.shape[-1] != f_t.shape[-1]:
            raise UserError(f"kdsvd needs the same channels in the student's and the teacher's stage outputs; stage "
                            f"{i + 1} has {f_s.shape[-1]} and {f_t.shape[-1]} (choose a pair with equal widths)")


class KDSVD(Method):
    display_name = "KDSVD"
    uses_teacher = True
    defaults = {"k": 1}  # KDSVD(k=1): singular vectors of the teacher; the student's first k + 3 are searched
    specs = {"k": positive_int}

    def init(self, rng, probe) -> MethodInit:
        check_channels(probe.student, probe.teacher)
        return MethodInit()

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        check_channels(student, teacher)
        losses = kdsvd_losses(student.features, teacher.features, self.settings["k"])
        return TermOutput(sum(losses), metrics={f"stages{i + 1}_{i + 2}": loss for i, loss in enumerate(losses)})
