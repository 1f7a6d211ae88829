"""KD: distilling the knowledge in a neural network (Hinton et al., 2015), as RepDistiller's `--distill kd`
(`distiller_zoo/KD.py` `DistillKL`; docs/methods.md, "What each term is": KD).

The KD term is `kd_term`: weighted by `loss.alpha` beside `gamma * CE` and `beta * the method's term`, it is
computed by the engine for every method with a teacher, since RepDistiller's recipes add it to any method's
own term (CRD+KD: alpha 1 beside beta 0.8) and mdistiller's to DKD's (alpha 0). The KD method itself adds no
term of its own: it only asks for the teacher (recipe gamma 0.1, alpha 0.9, beta 0).
"""

import jax

from jaxkd.engine.losses import kd_divergence
from jaxkd.methods.base import Method
from jaxkd.models import ModelOutput


def kd_term(student: ModelOutput, teacher: ModelOutput, loss) -> jax.Array:
    """The KD term of `loss` (`config.loss`): KL(p_t || p_s) at `loss.kd_temperature` times T^2, on logits
    z-scored first with `loss.logit_standardization` (Sun et al. 2024; absent in configs that predate it)."""
    return kd_divergence(student.logits, teacher.logits, loss.kd_temperature, loss.get("logit_standardization", False))


class KD(Method):
    display_name = "KD"
    uses_teacher = True
