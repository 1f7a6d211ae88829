"""KDSVD: self-supervised knowledge distillation using singular value decomposition (Lee et al., ECCV 2018), on
every stage output, feat[1:-1], in one of its two upstream layouts (`kdsvd.layout`; docs/methods.md, "What each
term is": KDSVD):
- `repdistiller` (the default, and what every config saved before the setting ran): RepDistiller's
  `distiller_zoo/KDSVD.py` `KDSVD.svd` decomposes each example's map as a (H*W, C) matrix, so its vectors run
  over channels;
- `mdistiller` (`configs/mdistiller.py:T,S,kdsvd`): mdistiller's `mdistiller/distillers/KDSVD.py` `svd` views the
  NCHW map as (C*H, W), so its vectors run over the map's columns.
The rest is the same function in both: the teacher keeps its first right singular vector (k = 1), the student
its first k + 3, of which the one most aligned with the teacher's (largest |cos|) is kept, sign-matched. Between
consecutive stages, the RBF exp(-(v_i[a] - v_{i-1}[b])^2 / 8) over all component pairs is compared, squared
differences summed and divided by B. The two sides' vectors are multiplied, so every paired stage needs the same
vector length on both sides: channels (repdistiller), map width (mdistiller).

The sign of the teacher's vector is not fixed by the SVD (upstream takes whatever `torch.svd` returns, and the RBF
between two stages depends on it); jaxkd makes each teacher vector's largest-magnitude component positive, so that
the term is the same on every device (docs/methods.md, "Where jaxkd differs": KDSVD, with how far that is from
`torch.svd`'s signs on the CIFAR pairs, `benchmarks/kdsvd_signs.py`)."""

import jax
import jax.numpy as jnp

from jaxkd.config.specs import one_of, positive_int
from jaxkd.errors import UserError
from jaxkd.methods.base import Method, MethodInit, TermOutput
from jaxkd.methods.functional import normalize

RBF_SCALE = 8.0  # exp(-d^2 / 8)
# kdsvd.layout -> (the matrix each example's map is decomposed as, what its right singular vectors run over)
LAYOUTS = {"repdistiller": ("(H*W, C)", "channels"), "mdistiller": ("(C*H, W)", "width")}


def finite_or_zero(x: jax.Array) -> jax.Array:
    """`removenan`: non-finite entries replaced by 0."""
    return jnp.where(jnp.isfinite(x), x, 0.0)


def as_matrices(feature: jax.Array, layout: str) -> jax.Array:
    """An NHWC stage output as the (B, rows, columns) matrices the layout decomposes: RepDistiller's (B, H*W, C),
    or mdistiller's `feat.view(B, C*H, W)` of the NCHW map (rows in its order, channel-major)."""
    if layout == "mdistiller":
        b, h, w, c = feature.shape
        return jnp.transpose(feature, (0, 3, 1, 2)).reshape(b, c * h, w)
    return feature.reshape(feature.shape[0], -1, feature.shape[-1])


def vector_length(feature_shape, layout: str) -> int:
    """The length of a stage's right singular vectors: C (repdistiller) or W (mdistiller) of an NHWC shape."""
    return feature_shape[2] if layout == "mdistiller" else feature_shape[-1]


def thin_svd(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`jnp.linalg.svd(x, full_matrices=False)` of a batch of matrices; on a CPU one matrix per LAPACK call.
    jaxlib 0.10-0.11's CPU LAPACK kernels split a large batch into tasks on XLA's CPU thread pool and block their
    pool thread until the tasks ran: SVDs running at once on every thread of the pool (2 on a 2-core machine)
    deadlock the step, for good. A call on one matrix runs where it is called (docs/methods.md, "Where jaxkd
    differs": KDSVD). Other devices take the batch in one call."""
    def batched(x):
        return jnp.linalg.svd(x, full_matrices=False)

    return jax.lax.platform_dependent(x, cpu=lambda x: jax.lax.map(batched, x), default=batched)


def leading_right_vectors(x: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """`svd(feat, n)`'s (s, v): of the matrices x (B, rows, columns), the first n singular values normalized to a
    unit vector, (B, n), and right singular vectors, each L2-normalized, (B, columns, n)."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # float32 at least (float64 where the tests enable it)
    # The same decomposition either way; XLA's CPU SVD of a tall matrix is ~30x slower than of its transpose.
    if x.shape[1] > x.shape[2]:  # tall: x^T = V S U^T, V its left singular vectors
        v, s, _ = thin_svd(jnp.swapaxes(x, 1, 2))
    else:
        _, s, vh = thin_svd(x)
        v = jnp.swapaxes(vh, 1, 2)
    v = finite_or_zero(v)[:, :, :n]
    return normalize(finite_or_zero(s)[:, :n], axis=1), normalize(v, axis=1)


def canonical_sign(v: jax.Array) -> jax.Array:
    """(B, L, n) with each vector's largest-magnitude component made positive."""
    largest = jnp.take_along_axis(v, jnp.argmax(jnp.abs(v), axis=1, keepdims=True), axis=1)
    return v * jnp.where(largest < 0, -1.0, 1.0)


def aligned(v_student: jax.Array, v_teacher: jax.Array) -> jax.Array:
    """`align_rsv`: of the student's vectors (B, L, m), the one with the largest |cos| to the teacher's (B, L, 1),
    times the sign of that cosine: (B, L, 1)."""
    cosine = jnp.einsum("bcm,bcn->bmn", v_student, v_teacher, precision=jax.lax.Precision.HIGHEST)
    largest = jnp.max(jnp.abs(cosine), axis=1, keepdims=True)
    mask = jax.lax.stop_gradient(jnp.where(largest == jnp.abs(cosine), jnp.sign(cosine), 0.0))
    return jnp.einsum("bcm,bmn->bcn", v_student, mask, precision=jax.lax.Precision.HIGHEST)


def rbf(v: jax.Array, v_previous: jax.Array) -> jax.Array:
    """(B, L_i, 1), (B, L_{i-1}, 1) -> (B, L_i, L_{i-1}, 1): exp(-(v[a] - v_previous[b])^2 / 8)."""
    return jnp.exp(-jnp.square(v[:, :, None, :] - v_previous[:, None, :, :]) / RBF_SCALE)


def kdsvd_losses(student_features, teacher_features, k: int, layout: str = "repdistiller") -> list:
    """`KDSVD.forward` / `kdsvd_loss`: one loss per pair of consecutive stages (len - 1 of them)."""
    losses, previous = [], None
    batch = student_features[0].shape[0]
    for f_s, f_t in zip(student_features, teacher_features):
        s_t, v_t = leading_right_vectors(as_matrices(f_t, layout), k)
        _, v_s = leading_right_vectors(as_matrices(f_s, layout), k + 3)
        v_t = canonical_sign(v_t)
        scale = s_t[:, None, :]
        v_s, v_t = aligned(v_s, v_t) * scale, v_t * scale
        if previous is not None:
            difference = jnp.square(rbf(v_s, previous[0]) - rbf(v_t, previous[1]))
            losses.append(jnp.sum(finite_or_zero(difference)) / batch)
        previous = (v_s, v_t)
    return losses


def check_vector_lengths(student, teacher, layout: str) -> None:
    """The two sides' vectors are multiplied: each paired stage needs the same channels (repdistiller) or map
    width (mdistiller) on both sides."""
    matrix, dimension = LAYOUTS[layout]
    for i, (f_s, f_t) in enumerate(zip(student.features, teacher.features)):
        length_s, length_t = vector_length(f_s.shape, layout), vector_length(f_t.shape, layout)
        if length_s != length_t:
            raise UserError(f"kdsvd (layout {layout}, {matrix} maps) needs the same {dimension} in the student's and "
                            f"the teacher's stage outputs; stage {i + 1} has {length_s} and {length_t} (choose a "
                            f"pair with equal {dimension})")


class KDSVD(Method):
    display_name = "KDSVD"
    uses_teacher = True
    # KDSVD(k=1) / CFG.KDSVD.K: singular vectors of the teacher; the student's first k + 3 are searched. layout:
    # whose matrix (LAYOUTS); repdistiller's where a config does not say (what configs saved before it meant).
    defaults = {"k": 1, "layout": "repdistiller"}
    specs = {"k": positive_int, "layout": one_of(*LAYOUTS)}

    def init(self, rng, probe) -> MethodInit:
        check_vector_lengths(probe.student, probe.teacher, self.settings["layout"])
        return MethodInit()

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        check_vector_lengths(student, teacher, self.settings["layout"])
        losses = kdsvd_losses(student.features, teacher.features, self.settings["k"], self.settings["layout"])
        return TermOutput(sum(losses), metrics={f"stages{i + 1}_{i + 2}": loss for i, loss in enumerate(losses)})
