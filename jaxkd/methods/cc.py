"""CC: correlation congruence (Peng et al., ICCV 2019), as RepDistiller's `distiller_zoo/CC.py` `Correlation`
and `train_student.py` run it (docs/methods.md, "What each term is": CC; recipe gamma 1, alpha 0, beta 0.02).

Two `LinearEmbed` heads (RepDistiller's `models/util.py`: flatten, `nn.Linear(dim, feat_dim)`, no normalization)
map the student's and the teacher's pooled vectors, feat[-1], to `feat_dim` (128, `--feat_dim`); both are
trained with the student (RepDistiller's trainable_list), the teacher's on the teacher's frozen features. With
d = |e_s - e_t|, the term is the batch mean over consecutive examples of sum_k d[i, k] d[i + 1, k]."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxkd.config.specs import positive_int
from jaxkd.methods.base import Method, TermOutput
from jaxkd.models.torch_layers import linear


class LinearEmbeddings(nn.Module):
    """The two `LinearEmbed`s, `embed_student` and `embed_teacher`, with PyTorch's `nn.Linear` init (weight and
    bias U(+-1/sqrt(dim))); params `{embed_student, embed_teacher}/{kernel = weight.T, bias}`."""

    features: int

    @nn.compact
    def __call__(self, student_vectors, teacher_vectors, train: bool = False):  # no BN: `train` changes nothing
        flat = lambda x: x.reshape(x.shape[0], -1)  # noqa: E731
        return (linear(flat(student_vectors), self.features, "embed_student"),
                linear(flat(teacher_vectors), self.features, "embed_teacher"))


def correlation_loss(student_embedding: jax.Array, teacher_embedding: jax.Array) -> jax.Array:
    """`Correlation.forward`: mean over i < B - 1 of sum_k |e_s - e_t|[i, k] |e_s - e_t|[i + 1, k]."""
    delta = jnp.abs(student_embedding - teacher_embedding)
    return jnp.mean(jnp.sum(delta[:-1] * delta[1:], axis=1))


class CC(Method):
    display_name = "CC"
    uses_teacher = True
    defaults = {"feat_dim": 128}  # the embeddings' size (RepDistiller's --feat_dim)
    specs = {"feat_dim": positive_int}

    def module(self, student, teacher) -> LinearEmbeddings:
        return LinearEmbeddings(self.settings["feat_dim"])

    def module_inputs(self, student, teacher) -> tuple:
        return student.pooled, teacher.pooled

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        (embed_student, embed_teacher), _ = self.apply_module_of(variables, student, teacher, train)
        return TermOutput(correlation_loss(embed_student, embed_teacher))
