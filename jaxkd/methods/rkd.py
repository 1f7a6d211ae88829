"""RKD: relational knowledge distillation (Park et al., CVPR 2019), as RepDistiller's `distiller_zoo/RKD.py`
`RKDLoss` runs it on the pooled penultimate vectors, feat[-1] (docs/methods.md, "What each term is": RKD; recipe
gamma 1, alpha 0, beta 1, with w_d 25 and w_a 50 inside the term).

Distance: the B x B Euclidean distances of each side, divided by their mean over the positive entries; angle:
the cosines of the angle at every example between every two others. Each is compared by smooth-L1 (mean), and
the term is w_d * distance + w_a * angle. Relations between examples: any pair of models fits."""

import jax
import jax.numpy as jnp

from jaxkd.config.specs import non_negative_float
from jaxkd.methods.base import Method, TermOutput
from jaxkd.methods.functional import normalize, smooth_l1_loss

PDIST_EPS = 1e-12  # RKDLoss.pdist: squared distances are clamped to at least this before the square root


def normalized_distances(vectors: jax.Array) -> jax.Array:
    """`RKDLoss.pdist(e, squared=False)` (from |a|^2 + |b|^2 - 2 a.b, clamped, the diagonal set to 0) divided
    by the mean of its positive entries."""
    squares = jnp.sum(jnp.square(vectors), axis=1)
    products = jnp.matmul(vectors, vectors.T, precision=jax.lax.Precision.HIGHEST)
    distances = jnp.sqrt(jnp.maximum(squares[:, None] + squares[None, :] - 2.0 * products, PDIST_EPS))
    distances = jnp.where(jnp.eye(vectors.shape[0], dtype=bool), 0.0, distances)
    positive = distances > 0
    return distances / (jnp.sum(jnp.where(positive, distances, 0.0)) / jnp.sum(positive))


def angles(vectors: jax.Array) -> jax.Array:
    """(B, D) -> (B, B, B): entry [i, j, k] is the cosine between e_j - e_i and e_k - e_i (0 where j or k is i)."""
    directions = normalize(vectors[None, :, :] - vectors[:, None, :], axis=2)
    return jnp.einsum("ijd,ikd->ijk", directions, directions, precision=jax.lax.Precision.HIGHEST)


def rkd_losses(student_vectors: jax.Array, teacher_vectors: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(distance loss, angle loss), unweighted."""
    student = student_vectors.reshape(student_vectors.shape[0], -1)
    teacher = teacher_vectors.reshape(teacher_vectors.shape[0], -1)
    distance = smooth_l1_loss(normalized_distances(student), normalized_distances(teacher))
    return distance, smooth_l1_loss(angles(student), angles(teacher))


class RKD(Method):
    display_name = "RKD"
    uses_teacher = True
    defaults = {"distance_weight": 25.0, "angle_weight": 50.0}  # RKDLoss(w_d=25, w_a=50)
    specs = {"distance_weight": non_negative_float, "angle_weight": non_negative_float}

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        distance, angle = rkd_losses(student.pooled, teacher.pooled)
        term = self.settings["distance_weight"] * distance + self.settings["angle_weight"] * angle
        return TermOutput(term, metrics={"distance": distance, "angle": angle})
