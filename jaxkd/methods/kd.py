"""KD (Hinton et al., 2015) as RepDistiller runs it: the KD term enters through alpha, the method adds nothing.

With `--distill kd` RepDistiller's loss is gamma * CE + alpha * KL_T + beta * 0; the KD recipe is gamma 0.1,
alpha 0.9, T 4 (METHODS.md section 1). `jaxkd.losses.kd_divergence` is the KL term, computed by the engine for
every method that has a teacher.
"""

from jaxkd.methods.base import Method


class KD(Method):
    name = "kd"
    uses_teacher = True
