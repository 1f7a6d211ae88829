"""FitNets: hints for thin deep nets (Romero et al., ICLR 2015), as RepDistiller's `distiller_zoo/FitNet.py`
`HintLoss` runs it (docs/methods.md, "What each term is": FitNets; recipe gamma 1, alpha 0, beta 100):
`nn.MSELoss()` between the regressed student feature and the teacher's. The regressor (`ConvReg`, RepDistiller's
`models/util.py`) trains with the student from the first step, in train mode, as in RepDistiller."""

import jax.numpy as jnp

from jaxkd.config.specs import non_negative_int
from jaxkd.errors import UserError
from jaxkd.methods.base import Method, TermOutput
from jaxkd.models.heads import ConvReg


class FitNets(Method):
    display_name = "FitNets"
    uses_teacher = True
    defaults = {"hint_layer": 1}  # index into the stage outputs: the 2nd (RepDistiller's --hint_layer 2)
    specs = {"hint_layer": non_negative_int}  # its upper bound, the models' stage count, is checked at init

    def hint_pair(self, student, teacher):
        """(student feature, teacher feature) at the hint layer."""
        layer, count = self.settings["hint_layer"], min(len(student.features), len(teacher.features))
        if not 0 <= layer < count:
            raise UserError(f"fitnet.hint_layer {layer} is out of range: the models have {count} stage outputs "
                            f"(0 to {count - 1})")
        return student.features[layer], teacher.features[layer]

    def module(self, student, teacher) -> ConvReg:
        """The regressor: it follows the hint layer's shapes."""
        f_s, f_t = self.hint_pair(student, teacher)
        return ConvReg.between(f_s.shape, f_t.shape)

    def module_inputs(self, student, teacher) -> tuple:
        return (self.hint_pair(student, teacher)[0],)

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        regressed, batch_stats = self.apply_module_of(variables, student, teacher, train)
        mse = jnp.mean(jnp.square(regressed - self.hint_pair(student, teacher)[1]))
        return TermOutput(mse, batch_stats=batch_stats)
