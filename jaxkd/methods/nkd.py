"""NKD: normalized knowledge distillation (Yang et al., ICCV 2023, "From Knowledge Distillation to Self-Knowledge
Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels"), as the authors' yzd-v/cls_KD
`mmcls/models/dis_losses/nkd.py` `NKDLoss.forward` computes it (docs/methods.md, "What each term is": NKD).

The KD loss split at the target class, each part normalized on its own: the target part is the teacher's target
probability times the student's target log-probability (at temperature 1), -mean(t_t * log s_t); the non-target
part is the cross-entropy between the teacher's and the student's softmaxes over the non-target classes alone
(the target column removed, so both renormalize over the other C - 1 classes) at temperature T, times gamma * T^2.
The term is their sum; the engine's gamma * CE is cls_KD's `ori_loss`, its beta 1. The official code has no logit
standardization: `loss.logit_standardization` does not apply to this term.

Under SaliencyMix an example has two labels: as cls_KD takes `argmax` of a mixed (soft) label, the term reads the
label of the larger weight, the example's own where lam > 0.5, its partner's where lam < 0.5 and, at an exact
tie, the smaller class index (`torch.max` returns the first maximal index).
"""

import jax
import jax.numpy as jnp

from jaxkd.config.specs import non_negative_float, positive_float
from jaxkd.methods.base import Method, TermOutput


def masked_log_softmax(logits: jax.Array, keep: jax.Array) -> jax.Array:
    """log_softmax over the entries of each row where `keep`, the others left out of the normalization (their
    values are meaningless; callers mask them): cls_KD's `log_softmax(logit[mask].reshape(N, -1))` without the
    dynamic shape."""
    peak = jnp.max(jnp.where(keep, logits, -jnp.inf), axis=-1, keepdims=True)
    shifted = logits - jax.lax.stop_gradient(peak)
    log_sum = jnp.log(jnp.sum(jnp.where(keep, jnp.exp(jnp.where(keep, shifted, 0.0)), 0.0), axis=-1, keepdims=True))
    return shifted - log_sum


def nkd_parts(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, temperature: float,
              gamma: float) -> tuple[jax.Array, jax.Array]:
    """(target part, non-target part) of NKDLoss, batch means; the term is their sum. The non-target part includes
    its gamma * T^2."""
    target = jax.nn.one_hot(labels, student_logits.shape[-1], dtype=jnp.bool_)
    log_s = jax.nn.log_softmax(student_logits, axis=-1)
    p_t = jax.nn.softmax(teacher_logits, axis=-1)
    s_target = jnp.sum(jnp.where(target, log_s, 0.0), axis=-1)
    t_target = jnp.sum(jnp.where(target, p_t, 0.0), axis=-1)
    target_part = -jnp.mean(t_target * s_target)

    others = ~target
    log_s_others = masked_log_softmax(student_logits / temperature, others)
    log_t_others = masked_log_softmax(teacher_logits / temperature, others)
    cross = jnp.sum(jnp.where(others, jnp.exp(log_t_others) * log_s_others, 0.0), axis=-1)
    non_target_part = -gamma * temperature**2 * jnp.mean(cross)
    return target_part, non_target_part


def dominant_labels(labels: jax.Array, partners: jax.Array | None, lam) -> jax.Array:
    """Each example's label of the larger weight under SaliencyMix (cls_KD's `torch.max(gt_label, dim=1)[1]` of a
    mixed label); the labels themselves without mixing."""
    if partners is None:
        return labels
    lam = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), labels.shape)
    partner_labels = labels[partners]
    tie = jnp.minimum(labels, partner_labels)
    return jnp.where(lam > 0.5, labels, jnp.where(lam < 0.5, partner_labels, tie))


class NKD(Method):
    display_name = "NKD"
    uses_teacher = True
    # cls_KD configs/distillers/cifar100/res34_distill_res18_cifar.py: NKDLoss(temp=3.0, gamma=3.5), its one
    # CIFAR-100 setting (NKDLoss's own defaults, temp 1 and gamma 1.5, are its ImageNet setting)
    defaults = {"temperature": 3.0, "gamma": 3.5}
    specs = {"temperature": positive_float, "gamma": non_negative_float}

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        s = self.settings
        labels = dominant_labels(batch.labels, batch.partners, batch.lam)
        target_part, non_target_part = nkd_parts(student.logits, teacher.logits, labels, s["temperature"],
                                                 s["gamma"])
        return TermOutput(target_part + non_target_part,
                          metrics={"target": target_part, "non_target": non_target_part})
