"""DKD: decoupled knowledge distillation (Zhao et al., CVPR 2022), as mdistiller's `distillers/DKD.py`
`dkd_loss` and `DKD.forward_train` run it (docs/methods.md, "What each term is": DKD).

The KD loss split at the target class: TCKD, the KL between the binary (target, all others) probabilities of
teacher and student, and NCKD, the KL between their distributions over the non-target classes (the target's
logit pushed down by 1000 before the softmax), each summed over classes, divided by B, times T^2. The term is
`min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD)`, the linear warm-up over mdistiller's 1-based epoch
(`Batch.epoch`); the engine's gamma * CE is mdistiller's CE_WEIGHT * CE, its beta 1. With
`loss.logit_standardization` both logits are z-scored first, as logit-standardization-KD's `dkd_loss`.

Under SaliencyMix an example has two labels: the term is mixed as the engine's CE is, lam * DKD(own label) +
(1 - lam) * DKD(partner's label), per example when lam is.
"""

import jax
import jax.numpy as jnp

from jaxkd.config.specs import non_negative_float, positive_float, positive_int
from jaxkd.engine.losses import standardize_logits
from jaxkd.methods.base import Method, TermOutput, epoch_warmup, label_mixed

NON_TARGET_SHIFT = 1000.0  # mdistiller: logits / T - 1000 * gt_mask before NCKD's softmaxes


def _kl_rows(target: jax.Array, log_target: jax.Array, log_input: jax.Array) -> jax.Array:
    """Per row, `F.kl_div(log_input, target)` summed over the last axis (a target of 0 contributes 0)."""
    return jnp.sum(jnp.where(target > 0, target * (log_target - log_input), 0.0), axis=-1)


def dkd_per_example(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, temperature: float,
                    logit_standardization: bool = False):
    """(TCKD, NCKD) per example, (B,) each, both times T^2; their batch means are mdistiller's tckd_loss and
    nckd_loss."""
    if logit_standardization:
        student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
    gt_mask = jax.nn.one_hot(labels, student_logits.shape[-1], dtype=jnp.float32)

    def binary(logits):  # cat_mask(softmax(z / T), gt_mask, other_mask): (p_target, sum of the others)
        p = jax.nn.softmax(logits / temperature, axis=-1)
        return jnp.stack([jnp.sum(p * gt_mask, -1), jnp.sum(p * (1.0 - gt_mask), -1)], axis=-1)

    b_s, b_t = binary(student_logits), binary(teacher_logits)
    tckd = _kl_rows(b_t, jnp.log(b_t), jnp.log(b_s))
    shifted_s = student_logits / temperature - NON_TARGET_SHIFT * gt_mask
    shifted_t = teacher_logits / temperature - NON_TARGET_SHIFT * gt_mask
    p_t2 = jax.nn.softmax(shifted_t, axis=-1)
    nckd = _kl_rows(p_t2, jax.nn.log_softmax(shifted_t, axis=-1), jax.nn.log_softmax(shifted_s, axis=-1))
    scale = temperature**2
    return tckd * scale, nckd * scale


class DKD(Method):
    display_name = "DKD"
    uses_teacher = True
    # mdistiller's engine/cfg.py CFG.DKD (its CE_WEIGHT is the engine's loss.gamma); configs/mdistiller.py sets
    # each pair's values (beta 6 for wrn_40_2 -> wrn_16_2)
    defaults = {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20}
    specs = {"alpha": non_negative_float, "beta": non_negative_float, "temperature": positive_float,
             "warmup": positive_int}  # warmup: epochs (mdistiller divides by it)
    moved_settings = {"logit_standardization": "loss.logit_standardization"}

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        s = self.settings

        def losses(labels):
            return dkd_per_example(student.logits, teacher.logits, labels, s["temperature"],
                                   self.logit_standardization)

        tckd, nckd = label_mixed(losses, batch)  # SaliencyMix: each example's two labels, weighted as the CE's
        tckd, nckd = jnp.mean(tckd), jnp.mean(nckd)
        factor = epoch_warmup(batch.epoch, s["warmup"])
        return TermOutput(factor * (s["alpha"] * tckd + s["beta"] * nckd),
                          metrics={"tckd": tckd, "nckd": nckd, "warmup": factor})
