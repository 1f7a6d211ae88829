"""CTKD: curriculum temperature for knowledge distillation (Li et al., AAAI 2023), as the authors' zhengli97/CTKD
runs it (`models/temp_global.py` `Global_T` and `GradientReversalFunction`, `train_student.py` `CosineDecay`,
`helper/loops.py` `train_distill`; docs/methods.md, "What each term is": CTKD).

The distillation temperature is learned: T = temperature_min + temperature_range * sigmoid(global_t), one
trainable scalar (`Global_T`, initialized to 1), trained with the student (same SGD, lr and weight decay, as the
authors' `trainable_list`) but adversarially: a gradient-reversal layer between the scalar and the loss multiplies
its gradient by -lambda, so the temperature moves to make the distillation loss larger. lambda follows the
curriculum, a cosine rise from lambda_start to lambda_end over the first `curriculum_epochs` 1-based epochs
(`Batch.epoch`, traced: no recompile), constant afterwards. The term is the base logit loss at the learned T: KD
(the authors' `DistillKL(y_s, y_t, temp)`) or DKD (their `DKDloss(..., temp)`, jaxkd's `dkd_per_example`). The
recipes set loss.alpha 0, so that the engine's fixed-temperature KD term does not count KD a second time.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxkd.config.specs import non_negative_float, one_of, positive_float, positive_int
from jaxkd.engine.losses import kd_divergence
from jaxkd.methods.base import Method, TermOutput, apply_module, label_mixed
from jaxkd.methods.dkd import dkd_per_example


@jax.custom_vjp
def reverse_gradient(x: jax.Array, strength: jax.Array) -> jax.Array:
    """The identity forward; backward, the gradient times -strength (Ganin & Lempitsky's gradient reversal, the
    authors' `GradientReversalFunction`, which multiplies by its `lambda_`, the negative curriculum value)."""
    return x


def _reverse_gradient_forward(x, strength):
    return x, strength


def _reverse_gradient_backward(strength, gradient):
    return (-strength * gradient).astype(gradient.dtype), jnp.zeros_like(strength)


reverse_gradient.defvjp(_reverse_gradient_forward, _reverse_gradient_backward)


def curriculum_lambda(epoch, lambda_start: float, lambda_end: float, curriculum_epochs: int) -> jax.Array:
    """The reversal strength at the 1-based `epoch` (traced): `CosineDecay(max=-lambda_start, min=-lambda_end,
    num_loops=curriculum_epochs).get_value(epoch)` negated, start + (end - start) * (1 - cos(pi e / E)) / 2, the epoch
    clamped to [0, E]. Written with (1 - cos x) / 2 = sin(x / 2)^2, which has no cancellation near 0 (the authors
    compute it in float64; float32's 1 - cos would lose the first epochs' small values)."""
    progress = jnp.clip(jnp.asarray(epoch, float), 0.0, curriculum_epochs)
    return lambda_start + (lambda_end - lambda_start) * jnp.square(jnp.sin(progress * (jnp.pi / 2) / curriculum_epochs))


class LearnableTemperature(nn.Module):
    """The authors' `Global_T` with the mapping of `train_distill`: T = minimum + span * sigmoid(global_t),
    global_t a (1,) parameter starting at 1, its gradient reversed with `strength`."""

    minimum: float
    span: float

    @nn.compact
    def __call__(self, strength: jax.Array, train: bool = True) -> jax.Array:
        global_t = self.param("global_t", nn.initializers.ones, (1,), jnp.float32)
        return self.minimum + self.span * jax.nn.sigmoid(reverse_gradient(global_t, strength)[0])


class CTKD(Method):
    display_name = "CTKD"
    uses_teacher = True
    # train_student.py's CTKD options as scripts/run_cifar_distill.sh sets them: --t_start 1 (temperature_min),
    # --t_end 20 (temperature_range), --cosine_decay 1 --decay_max 0 --decay_min -1 (-lambda_start, -lambda_end)
    # --decay_loops 10 (curriculum_epochs); --dkd_alpha 1 --dkd_beta 2 for the DKD base (its DKD line)
    defaults = {"base": "kd", "temperature_min": 1.0, "temperature_range": 20.0, "lambda_start": 0.0,
                "lambda_end": 1.0, "curriculum_epochs": 10, "dkd_alpha": 1.0, "dkd_beta": 2.0}
    specs = {"base": one_of("kd", "dkd"), "temperature_min": positive_float, "temperature_range": non_negative_float,
             "lambda_start": non_negative_float, "lambda_end": non_negative_float, "curriculum_epochs": positive_int,
             "dkd_alpha": non_negative_float, "dkd_beta": non_negative_float}

    def module(self, student, teacher) -> LearnableTemperature:
        return LearnableTemperature(self.settings["temperature_min"], self.settings["temperature_range"])

    def module_inputs(self, student, teacher) -> tuple:
        return (jnp.zeros((), jnp.float32),)  # the reversal strength; the term passes the epoch's

    def temperature(self, variables: dict, epoch, train: bool = True) -> tuple[jax.Array, jax.Array]:
        """(the learned temperature, with its gradient reversed at the epoch's strength; that strength)."""
        s = self.settings
        strength = curriculum_lambda(epoch, s["lambda_start"], s["lambda_end"], s["curriculum_epochs"])
        temperature, _ = apply_module(self.module(None, None), variables, strength, train=train)
        return temperature, strength

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        s = self.settings
        temperature, strength = self.temperature(variables, batch.epoch, train)
        metrics = {"temperature": temperature, "lambda": strength}
        if s["base"] == "kd":
            loss = kd_divergence(student.logits, teacher.logits, temperature, self.logit_standardization)
            return TermOutput(loss, metrics=metrics)

        def losses(labels):
            return dkd_per_example(student.logits, teacher.logits, labels, temperature, self.logit_standardization)

        tckd, nckd = label_mixed(losses, batch)  # SaliencyMix: each example's two labels, as DKD
        tckd, nckd = jnp.mean(tckd), jnp.mean(nckd)
        return TermOutput(s["dkd_alpha"] * tckd + s["dkd_beta"] * nckd, metrics={**metrics, "tckd": tckd, "nckd": nckd})
