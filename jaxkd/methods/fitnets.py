"""FitNets (Romero et al., "FitNets: Hints for Thin Deep Nets", 2015) as RepDistiller's `hint` runs it.

A regressor `ConvReg` maps the student's hint feature onto the teacher's, and the term is their mean squared
error (`nn.MSELoss()`: the mean over all B*H*W*C elements). RepDistiller trains in a single stage: the regressor
is trained and weight-decayed with the student from the first step, in train mode (batch statistics). The hint
is the second stage output, `features[1]` (RepDistiller's `--hint_layer 2`). Recipe: gamma 1, alpha 0, beta 100
(METHODS.md section 2). Hyperparameters: `config.fitnet.hint_layer` (default 1).
"""

import jax
import jax.numpy as jnp

from jaxkd.errors import UserError
from jaxkd.methods.base import Method, MethodInit, TermOutput
from jaxkd.models.heads import ConvReg

DEFAULT_HINT_LAYER = 1


def hint_loss(regressed: jax.Array, target: jax.Array) -> jax.Array:
    """`nn.MSELoss()`: the mean over every element of (r(f_s) - f_t)^2; the teacher gets no gradient."""
    target = jax.lax.stop_gradient(target.astype(jnp.float32))
    return jnp.mean(jnp.square(regressed.astype(jnp.float32) - target))


class FitNets(Method):
    name = "fitnet"
    uses_teacher = True

    def __init__(self, config):
        super().__init__(config)
        section = config.get("fitnet") if config is not None else None
        self.hint_layer = int(section.get("hint_layer", DEFAULT_HINT_LAYER)) if section else DEFAULT_HINT_LAYER

    def _hint_features(self, student, teacher):
        count = min(len(student.features), len(teacher.features))
        if not 0 <= self.hint_layer < count:
            raise UserError(f"fitnet.hint_layer {self.hint_layer} is out of range: the models have {count} "
                            f"stage outputs (0 to {count - 1})")
        return (student.features[self.hint_layer].astype(jnp.float32),
                teacher.features[self.hint_layer].astype(jnp.float32))

    def regressor(self, student_feature, teacher_feature) -> ConvReg:
        """The ConvReg for these feature shapes: fixed by the shapes, so `init` and `term` build the same one."""
        return ConvReg.between(student_feature.shape, teacher_feature.shape)

    def init(self, rng, probe) -> MethodInit:
        student_feature, teacher_feature = self._hint_features(probe.student, probe.teacher)
        variables = self.regressor(student_feature, teacher_feature).init(rng, student_feature, train=False)
        return MethodInit({"params": variables["params"], "batch_stats": variables["batch_stats"]}, {})

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        student_feature, teacher_feature = self._hint_features(student, teacher)
        regressor = self.regressor(student_feature, teacher_feature)
        if train:
            regressed, updates = regressor.apply(variables, student_feature, train=True, mutable=["batch_stats"])
            batch_stats = updates["batch_stats"]
        else:
            regressed = regressor.apply(variables, student_feature, train=False)
            batch_stats = variables["batch_stats"]
        return TermOutput(hint_loss(regressed, teacher_feature), batch_stats, state, {})
