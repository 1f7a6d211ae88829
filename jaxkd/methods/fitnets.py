"""FitNets: hints for thin deep nets (Romero et al., ICLR 2015), as RepDistiller's `distiller_zoo/FitNet.py`
`HintLoss` runs it (docs/methods.md, "What each term is": FitNets; recipe gamma 1, alpha 0, beta 100):
`nn.MSELoss()` between the regressed student feature and the teacher's. The regressor (`ConvReg`, RepDistiller's
`models/util.py`) trains with the student from the first step, in train mode, as in RepDistiller."""

import jax
import jax.numpy as jnp

from jaxkd.config.specs import non_negative_int
from jaxkd.errors import UserError
from jaxkd.methods.base import Method, MethodInit, TermOutput, apply_module
from jaxkd.models.heads import ConvReg


class FitNets(Method):
    uses_teacher = True
    defaults = {"hint_layer": 1}  # index into the stage outputs: the 2nd (RepDistiller's --hint_layer 2)
    specs = {"hint_layer": non_negative_int}  # its upper bound, the models' stage count, is checked at init

    def hint_pair(self, student, teacher):
        """(regressor, student feature, teacher feature) at the hint layer: the regressor follows the shapes."""
        layer, count = self.settings["hint_layer"], min(len(student.features), len(teacher.features))
        if not 0 <= layer < count:
            raise UserError(f"fitnet.hint_layer {layer} is out of range: the models have {count} stage outputs "
                            f"(0 to {count - 1})")
        f_s, f_t = student.features[layer].astype(jnp.float32), teacher.features[layer].astype(jnp.float32)
        return ConvReg.between(f_s.shape, f_t.shape), f_s, f_t

    def init(self, rng, probe) -> MethodInit:
        regressor, f_s, _ = self.hint_pair(probe.student, probe.teacher)
        return MethodInit(dict(regressor.init(rng, f_s, train=False)))

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        regressor, f_s, f_t = self.hint_pair(student, teacher)
        regressed, batch_stats = apply_module(regressor, variables, f_s, train=train)
        mse = jnp.mean(jnp.square(regressed.astype(jnp.float32) - jax.lax.stop_gradient(f_t)))  # the teacher: no grad
        return TermOutput(mse, batch_stats=batch_stats)
