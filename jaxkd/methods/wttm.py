"""WTTM: weighted transformed teacher matching (Zheng & Yang, ICLR 2024, "Knowledge Distillation Based on
Transformed Teacher Matching"), as the authors' zkxufo/TTM `distiller_zoo/wttm.py` `WTTM.forward` computes it
(docs/methods.md, "What each term is": WTTM).

The teacher's softmax is raised to the power gamma (`ttm_l`; temperature 1 / gamma on the teacher alone) and
renormalized; the student's softmax is left at temperature 1. Each example's KL(transformed teacher || student)
is weighted by the power sum of its teacher, sum_c p_t[c]^gamma (the sample-adaptive weight: large for a smooth
teacher, 1 for a one-hot one; it is exp((1 - gamma) H_gamma(p_t)) with H_gamma the Renyi entropy of order gamma);
the term is the batch mean of the weighted KLs. The official code has no logit standardization:
`loss.logit_standardization` does not apply to this term.
"""

import jax
import jax.numpy as jnp

from jaxkd.config.specs import positive_float
from jaxkd.methods.base import Method, TermOutput


def wttm_parts(student_logits: jax.Array, teacher_logits: jax.Array, exponent: float):
    """(weights, KLs), (B,) each: the power sums sum_c p_t^gamma and KL(p_t^gamma / sum || softmax(z_s)); the term is
    the batch mean of their product."""
    powered = jnp.power(jax.nn.softmax(teacher_logits, axis=-1), exponent)
    weights = jnp.sum(powered, axis=-1)
    transformed = powered / weights[:, None]
    log_s = jax.nn.log_softmax(student_logits, axis=-1)
    positive = transformed > 0  # F.kl_div's 0 log 0 = 0 (a teacher probability underflowed to 0)
    log_transformed = jnp.log(jnp.where(positive, transformed, 1.0))
    kls = jnp.sum(jnp.where(positive, transformed * (log_transformed - log_s), 0.0), axis=-1)
    return weights, kls


class WTTM(Method):
    display_name = "WTTM"
    uses_teacher = True
    # train_student.py --ttm_l: the exponent gamma of the power transform; 0.2 is the README's WTTM command
    # (`--add wttm --ttm_l 0.2`); configs/mdistiller.py holds the recipe
    defaults = {"exponent": 0.2}
    specs = {"exponent": positive_float}

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        weights, kls = wttm_parts(student.logits, teacher.logits, self.settings["exponent"])
        return TermOutput(jnp.mean(weights * kls), metrics={"weight": jnp.mean(weights), "ttm": jnp.mean(kls)})
