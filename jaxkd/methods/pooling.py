"""PyTorch's `F.adaptive_avg_pool2d` on NHWC, for methods that compare feature maps of different sizes (AT, NST,
VID)."""

import jax
import jax.numpy as jnp
import numpy as np


def averaging_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in): output cell i averages inputs floor(i*in/out) .. ceil((i+1)*in/out) - 1."""
    matrix = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool2d(x: jax.Array, out_h: int, out_w: int) -> jax.Array:
    """`F.adaptive_avg_pool2d(x, (out_h, out_w))` on NHWC, as two small averaging matrices."""
    rows = jnp.asarray(averaging_matrix(x.shape[1], out_h))
    cols = jnp.asarray(averaging_matrix(x.shape[2], out_w))
    return jnp.einsum("oh,bhwc,pw->bopc", rows, x, cols, precision=jax.lax.Precision.HIGHEST)


def pool_to_common_size(student: jax.Array, teacher: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(student, teacher) NHWC feature maps at the smaller one's H and W: the larger is adaptive-average-pooled
    down, as RepDistiller's AT, NST and VID do before comparing maps of different sizes."""
    out_h, out_w = min(student.shape[1], teacher.shape[1]), min(student.shape[2], teacher.shape[2])
    if student.shape[1:3] != (out_h, out_w):
        student = adaptive_avg_pool2d(student, out_h, out_w)
    if teacher.shape[1:3] != (out_h, out_w):
        teacher = adaptive_avg_pool2d(teacher, out_h, out_w)
    return student, teacher
