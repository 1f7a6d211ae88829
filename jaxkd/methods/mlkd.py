"""MLKD: multi-level logit distillation (Jin et al., CVPR 2023, "Multi-Level Logit Distillation"), as the authors'
Jin-Ying/Multi-Level-Logit-Distillation `mdistiller/distillers/KD_ours.py` `KD_ours.forward_train` computes it
(docs/methods.md, "What each term is": MLKD).

The student and the teacher each see two views of every image: the usual weak one (`Batch.images`) and a strong
one (`Batch.strong_images`: crop, flip and RandAugment, `jaxkd.data.strong_augment`), which the engine makes and
runs both models on because `strong_view` is set. Over five temperatures (`temperature`, then the official code's
fixed 3, 5, 2, 6) the term sums, each part weighted by `weight` (its CFG.KD.LOSS.KD_WEIGHT):
- instance level: the KD divergence on the weak view, scaled by the fraction of examples whose teacher confidence
  (max softmax) is at most the batch median; and the plain KD divergence on the strong view, where the official
  code takes the last two temperatures' divergences (2 and 6) from the weak view's logits, kept here as written;
- class level: the squared difference of the C x C class-correlation matrices p^T p (over the batch) divided by C,
  on the weak view, scaled by the fraction of classes whose summed teacher probability is at most the median;
- batch level: the squared difference of the B x B example-correlation matrices p p^T divided by B, on the weak
  view, scaled by the instance fraction.
The official code multiplies a scalar (its `reduce=True` losses) by the boolean mask and takes the mean, so each
mask enters only through its fraction of True entries (about 1/2). It also computes strong-view class- and
batch-level losses that it never adds to the loss: they are left out here. Beside the engine's `gamma * CE` on the
weak view the term adds `strong_ce_weight * CE` on the strong view (its `loss_ce` holds both).
"""

import jax
import jax.numpy as jnp

from jaxkd.config.specs import positive_float
from jaxkd.engine.losses import cross_entropy, kd_divergence
from jaxkd.errors import UserError
from jaxkd.methods.base import Method, TermOutput

# KD_ours.forward_train: the temperatures after cfg.KD.TEMPERATURE, fixed in the code
FIXED_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)
# the temperatures (by position in `temperatures`) whose strong-view KD the official code takes from the weak view
WEAK_IN_STRONG_KD = (3, 4)


def softmax_at(logits: jax.Array, temperature: float) -> jax.Array:
    return jax.nn.softmax(logits / temperature, axis=-1)


def class_correlation_loss(student_logits, teacher_logits, temperature: float) -> jax.Array:
    """`cc_loss`: sum of squared differences of the (C, C) matrices p^T p, divided by the number of classes C."""
    p_s, p_t = softmax_at(student_logits, temperature), softmax_at(jax.lax.stop_gradient(teacher_logits), temperature)
    return jnp.sum((p_t.T @ p_t - p_s.T @ p_s) ** 2) / student_logits.shape[1]


def batch_correlation_loss(student_logits, teacher_logits, temperature: float) -> jax.Array:
    """`bc_loss`: sum of squared differences of the (B, B) matrices p p^T, divided by the batch size B."""
    p_s, p_t = softmax_at(student_logits, temperature), softmax_at(jax.lax.stop_gradient(teacher_logits), temperature)
    return jnp.sum((p_t @ p_t.T - p_s @ p_s.T) ** 2) / student_logits.shape[0]


def fraction_at_most_median(values: jax.Array) -> jax.Array:
    """The fraction of `values` at most their median (numpy's `percentile(values, 50)`, linear interpolation):
    `mask.mean()` of the official confidence masks."""
    return jnp.mean(values <= jnp.percentile(values, 50))


def mlkd_parts(student_weak, student_strong, teacher_weak, teacher_strong, temperatures, weight: float) -> dict:
    """The four weighted parts of the term on (B, C) logits: {"kd_weak", "kd_strong", "cc", "bc"}."""
    teacher_weak, teacher_strong = jax.lax.stop_gradient(teacher_weak), jax.lax.stop_gradient(teacher_strong)
    p_t = jax.nn.softmax(teacher_weak, axis=-1)
    instance_fraction = fraction_at_most_median(jnp.max(p_t, axis=-1))
    class_fraction = fraction_at_most_median(jnp.sum(p_t, axis=0))
    kd_weak = sum(kd_divergence(student_weak, teacher_weak, t) for t in temperatures)
    kd_strong = sum(kd_divergence(student_weak, teacher_weak, t) if i in WEAK_IN_STRONG_KD
                    else kd_divergence(student_strong, teacher_strong, t) for i, t in enumerate(temperatures))
    cc = sum(class_correlation_loss(student_weak, teacher_weak, t) for t in temperatures)
    bc = sum(batch_correlation_loss(student_weak, teacher_weak, t) for t in temperatures)
    return {"kd_weak": weight * kd_weak * instance_fraction, "kd_strong": weight * kd_strong,
            "cc": weight * cc * class_fraction, "bc": weight * bc * instance_fraction}


class MLKD(Method):
    display_name = "MLKD"
    uses_teacher = True
    strong_view = True  # the engine makes `Batch.strong_images` and both models' outputs on them
    # CFG.KD (mdistiller/engine/cfg.py), which KD_ours reads: TEMPERATURE 4, LOSS.KD_WEIGHT 0.9 and LOSS.CE_WEIGHT
    # 0.1, the weight of the strong view's CE here (the weak view's is the engine's gamma, 0.1 in the recipe)
    defaults = {"temperature": 4.0, "weight": 0.9, "strong_ce_weight": 0.1}
    specs = {"temperature": positive_float, "weight": positive_float, "strong_ce_weight": positive_float}

    def __init__(self, name: str, config=None):
        super().__init__(name, config)
        if self.logit_standardization:
            raise UserError("mlkd has no logit-standardized form (loss.logit_standardization must be False)")
        data = config.get("data", None) if config is not None else None
        if data is not None and data.get("saliencymix", False):
            raise UserError("mlkd does not combine with data.saliencymix (its strong view is not mixed)")
        self.temperatures = (self.settings["temperature"], *FIXED_TEMPERATURES)

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        parts = mlkd_parts(student.logits, batch.strong_student.logits, teacher.logits, batch.strong_teacher.logits,
                           self.temperatures, self.settings["weight"])
        strong_ce = cross_entropy(batch.strong_student.logits, batch.labels)
        term = self.settings["strong_ce_weight"] * strong_ce + sum(parts.values())
        return TermOutput(term, metrics={"strong_ce": strong_ce, **parts})
