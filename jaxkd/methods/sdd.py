"""SDD: scale decoupled distillation (Wei et al., CVPR 2024), as the authors' shicaiwei123/SDD-CVPR2024 runs it
(`mdistiller/models/cifar/utils.py` `SPP`, the `*_sdd` models' forward, `mdistiller/distillers/KD.py`
`sdd_kd_loss`, `SDD_DKD.py` `multi_dkd`; docs/methods.md, "What each term is": SDD).

Each side's last feature map (`ModelOutput.pooled_map`) is adaptive-average-pooled to 4x4, and that grid to 2x2
and 1x1 (`SPP`); every cell of the scales in `scales` (the official `--M`: "1,2,4" is 1 + 4 + 16 regions) goes
through the model's own classifier, giving a logit vector per region, the 1x1 one first (the global one). Per
region and example the base loss (KD's KL at T times T^2, or DKD's alpha * TCKD + beta * NCKD) is weighted 2 where
the teacher's prediction on the region and on the global region disagree about the label (complementary) and 1
where they agree (consistent); the term is the sum over regions and examples divided by their number, times
DKD's warm-up `min(epoch / warmup, 1)` for the DKD base (the KD base has none). `scales = "1"` is the plain
base loss on the models' logits, as the official code's `M == '[1]'` branch.

Under SaliencyMix (which the official code does not have) the term is mixed per example as DKD's and the CE are:
lam * SDD(own label) + (1 - lam) * SDD(partner's label).
"""

import jax
import jax.numpy as jnp

from jaxkd.config.specs import non_negative_float, one_of, positive_float, positive_int
from jaxkd.errors import UserError
from jaxkd.methods.base import Method, TermOutput, check_classifier_outputs, epoch_warmup, label_mixed
from jaxkd.methods.dkd import dkd_per_example
from jaxkd.methods.pooling import adaptive_avg_pool2d

SCALES = ("1", "1,2", "1,2,4")  # the official SPP's choices of --M ('[1]', '[1,2]', '[1,2,4]')
BASES = ("kd", "dkd")  # SDD_KD, SDD_DKD (the authors' SDD_NKD is not ported)
SPP_GRID = 4  # SPP pools the map to 4x4 first; the 2x2 and 1x1 scales are pooled from that grid


def region_features(feature_map: jax.Array, scales: str) -> jax.Array:
    """(B, N, C): the official `SPP(M)` of an NHWC map, regions ordered 1x1, then 2x2, then 4x4 (row-major)."""
    grid = adaptive_avg_pool2d(feature_map, SPP_GRID, SPP_GRID)
    pooled = {1: adaptive_avg_pool2d(grid, 1, 1), 2: adaptive_avg_pool2d(grid, 2, 2), 4: grid}
    batch, channels = feature_map.shape[0], feature_map.shape[-1]
    return jnp.concatenate([pooled[int(scale)].reshape(batch, -1, channels) for scale in scales.split(",")], axis=1)


def region_logits(feature_map: jax.Array, kernel: jax.Array, bias: jax.Array, scales: str) -> jax.Array:
    """(B, N, classes): the classifier applied to every region's pooled feature (the official `patch_score`)."""
    return jnp.einsum("bnc,ck->bnk", region_features(feature_map, scales), kernel,
                      precision=jax.lax.Precision.HIGHEST) + bias


def kd_rows(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
    """Per row, `F.kl_div(log_softmax(s / T), softmax(t / T))` summed over classes, times T^2 (0 log 0 = 0)."""
    log_p_s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    log_p_t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    p_t = jnp.exp(log_p_t)
    return jnp.sum(jnp.where(p_t > 0, p_t * (log_p_t - log_p_s), 0.0), axis=-1) * temperature**2


def consistency_weights(teacher_region_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """(B, N): 2 where the teacher's prediction on a region is right and on the global region (region 0) wrong,
    or the reverse (the official gw_lt and gt_lw, complementary), else 1 (gt_lt, gw_lw, consistent)."""
    correct = jnp.argmax(teacher_region_logits, axis=-1) == labels[:, None]
    return jnp.where(correct != correct[:, :1], 2.0, 1.0)


def sdd_per_example(student_regions: jax.Array, teacher_regions: jax.Array, labels: jax.Array, base: str,
                    temperature: float, dkd_alpha: float, dkd_beta: float) -> tuple[jax.Array, jax.Array]:
    """(the weighted base loss summed over regions and divided by their number, (B,); the complementary
    fraction, (B,)): the batch mean of the first is the official loss before the warm-up."""
    batch, regions, classes = student_regions.shape
    weights = consistency_weights(teacher_regions, labels)
    student_rows, teacher_rows = student_regions.reshape(-1, classes), teacher_regions.reshape(-1, classes)
    if base == "kd":
        rows = kd_rows(student_rows, teacher_rows, temperature)
    else:
        tckd, nckd = dkd_per_example(student_rows, teacher_rows, jnp.repeat(labels, regions), temperature)
        rows = dkd_alpha * tckd + dkd_beta * nckd
    weighted = jnp.sum(weights * rows.reshape(batch, regions), axis=1) / regions
    return weighted, jnp.mean(weights == 2.0, axis=1)


class SDD(Method):
    display_name = "SDD"
    uses_teacher = True
    # The authors' CIFAR-100 runs: --M [1,2,4] for most pairs (their teacher_*.sh; "1,2" for vgg13 -> vgg8 and
    # resnet32x4 -> resnet8x4 with the KD base), CFG.KD.TEMPERATURE 4 (KD base), CFG.DKD's alpha 1, beta 8,
    # T 4 (DKD base; beta per pair as mdistiller's yaml files) and train_origin.py's --warmup 20.
    defaults = {"base": "kd", "scales": "1,2,4", "temperature": 4.0, "dkd_alpha": 1.0, "dkd_beta": 8.0,
                "warmup": 20}
    specs = {"base": one_of(*BASES), "scales": one_of(*SCALES), "temperature": positive_float,
             "dkd_alpha": non_negative_float, "dkd_beta": non_negative_float, "warmup": positive_int}

    def __init__(self, name: str, config=None):
        super().__init__(name, config)
        if self.logit_standardization:
            raise UserError(f"{name} does not take loss.logit_standardization (the official SDD code has no such "
                            "option)")
        if self.settings["base"] == "kd":
            for key in ("dkd_alpha", "dkd_beta", "warmup"):
                if self.settings[key] != self.defaults[key]:
                    raise UserError(f"--config.{name}.{key}={self.settings[key]}: it takes effect only with "
                                    f"--config.{name}.base=dkd")

    def init(self, rng, probe):
        check_classifier_outputs(self.name, probe)
        return super().init(rng, probe)

    def region_logits_of(self, out) -> jax.Array:
        return region_logits(out.pooled_map, out.classifier_kernel, out.classifier_bias, self.settings["scales"])

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        s = self.settings
        if s["scales"] == "1":  # the official M == '[1]': the base loss on the models' logits
            student_regions, teacher_regions = student.logits[:, None], teacher.logits[:, None]
        else:
            student_regions, teacher_regions = self.region_logits_of(student), self.region_logits_of(teacher)
        teacher_regions = jax.lax.stop_gradient(teacher_regions)

        def losses(labels):
            return sdd_per_example(student_regions, teacher_regions, labels, s["base"], s["temperature"],
                                   s["dkd_alpha"], s["dkd_beta"])

        loss, complementary = label_mixed(losses, batch)  # SaliencyMix: each example's two labels, as DKD
        loss, metrics = jnp.mean(loss), {"complementary": jnp.mean(complementary)}
        if s["base"] == "dkd":
            factor = epoch_warmup(batch.epoch, s["warmup"])
            metrics.update(base=loss, warmup=factor)
            loss = factor * loss
        return TermOutput(loss, metrics=metrics)
