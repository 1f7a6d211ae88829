"""AT (Zagoruyko & Komodakis, "Paying More Attention to Attention", 2017) as RepDistiller's `attention` runs it.

The attention map of a feature is the channel mean of its squares, flattened and L2-normalized
(`F.normalize`, eps 1e-12). The term sums, over the three stage outputs, the mean over B*H*W of the squared
difference between the student's and the teacher's maps. Recipe: gamma 1, alpha 0, beta 1000, p = 2
(METHODS.md section 3). No trainable modules, no state.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.methods.base import Method, TermOutput


def adaptive_avg_pool2d(x: jax.Array, out_h: int, out_w: int) -> jax.Array:
    """`F.adaptive_avg_pool2d` on NHWC: output cell i averages rows floor(i*H/out) .. ceil((i+1)*H/out) - 1
    (and likewise for columns), written as two small averaging matrices."""

    def averaging_matrix(size_in: int, size_out: int) -> np.ndarray:
        matrix = np.zeros((size_out, size_in), np.float32)
        for i in range(size_out):
            start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
            matrix[i, start:end] = 1.0 / (end - start)
        return matrix

    rows = jnp.asarray(averaging_matrix(x.shape[1], out_h))
    cols = jnp.asarray(averaging_matrix(x.shape[2], out_w))
    return jnp.einsum("oh,bhwc,pw->bopc", rows, x, cols, precision=jax.lax.Precision.HIGHEST)


def attention_map(feature: jax.Array, eps: float = 1e-12) -> jax.Array:
    """(B, H, W, C) -> (B, H*W): normalize(mean_c f^2), with `F.normalize`'s v / max(||v||_2, eps)."""
    squared_mean = jnp.mean(jnp.square(feature.astype(jnp.float32)), axis=-1).reshape(feature.shape[0], -1)
    # sqrt(max(sum v^2, eps^2)) is max(||v||, eps), with a finite gradient (0 below eps, as PyTorch) at v = 0.
    norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(squared_mean), axis=1, keepdims=True), eps * eps))
    return squared_mean / norm


def attention_loss(student_feature: jax.Array, teacher_feature: jax.Array) -> jax.Array:
    """One pair's loss, mean over B*H*W of (a_s - a_t)^2. Maps of different sizes are first brought to the
    smaller size by adaptive average pooling of the features (RepDistiller pools the larger one down)."""
    teacher_feature = jax.lax.stop_gradient(teacher_feature)
    (_, s_h, s_w, _), (_, t_h, t_w, _) = student_feature.shape, teacher_feature.shape
    out_h, out_w = min(s_h, t_h), min(s_w, t_w)
    if (s_h, s_w) != (out_h, out_w):
        student_feature = adaptive_avg_pool2d(student_feature.astype(jnp.float32), out_h, out_w)
    if (t_h, t_w) != (out_h, out_w):
        teacher_feature = adaptive_avg_pool2d(teacher_feature.astype(jnp.float32), out_h, out_w)
    return jnp.mean(jnp.square(attention_map(student_feature) - attention_map(teacher_feature)))


class AT(Method):
    name = "at"
    uses_teacher = True
    metric_names = ("stage1", "stage2", "stage3")

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        losses = [attention_loss(s, t) for s, t in zip(student.features, teacher.features)]
        metrics = {f"stage{i + 1}": loss for i, loss in enumerate(losses)}
        return TermOutput(sum(losses), variables.get("batch_stats", {}), state, metrics)
