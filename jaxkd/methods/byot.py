"""BYOT (Zhang et al., "Be Your Own Teacher: Improve the Performance of Convolutional Neural Networks via Self
Distillation", ICCV 2019) on the seed's 3-stage family, after BYOT-U's `train.py` and `models/resnet.py`.

Self-distillation without a teacher: shallow bottleneck heads (`BYOTHead`) on the student's first two stage
outputs learn from its own deepest classifier. The loss, the heads' shapes and the settings: docs/methods.md,
"What each term is": BYOT.
"""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxkd.config.specs import fraction, non_negative_float, positive_float
from jaxkd.data.saliencymix import mixed_cross_entropy
from jaxkd.engine.losses import cross_entropy
from jaxkd.errors import UserError
from jaxkd.methods.base import Method, TermOutput, nested
from jaxkd.models.heads import BYOTHead

NUM_HEADS = 2  # heads on stages 1 and 2 of the 3-stage family
HEAD_NAMES = tuple(f"head{s}" for s in range(1, NUM_HEADS + 1))


def soft_cross_entropy(logits, target_logits, temperature: float):
    """BYOT-U's `kd_loss_function`: -mean_b sum_c softmax(target / T) * log_softmax(logits / T), the target
    without gradient (the caller multiplies by T^2)."""
    targets = jax.nn.softmax(jax.lax.stop_gradient(target_logits) / temperature, axis=-1)
    log_probabilities = jax.nn.log_softmax(logits / temperature, axis=-1)
    return -jnp.mean(jnp.sum(targets * log_probabilities, axis=-1))


def feature_loss(feature, target_feature):
    """BYOT-U's `feature_loss_function`: the squared L2 distance summed over batch and channels, the target
    without gradient. BYOT-U masks it with (F > 0) | (F_target > 0); both are post-ReLU means here, so where the
    mask is 0 both are 0 and the mask changes nothing."""
    return jnp.sum(jnp.square(feature - jax.lax.stop_gradient(target_feature)))


class Heads(nn.Module):
    """BYOT's trainable modules: the shallow heads `head1`, `head2`; called on the student's stage outputs,
    returns each head's (logits, feature)."""

    heads: tuple  # each head's BYOTHead fields: (bottleneck, features, stride, num_classes)

    @nn.compact
    def __call__(self, features, train: bool):
        return [BYOTHead(*fields, name=name)(feature, train=train)
                for name, fields, feature in zip(HEAD_NAMES, self.heads, features)]



class BYOT(Method):
    display_name = "BYOT"
    defaults = {"alpha": 0.1, "temperature": 3.0, "feature_weight": 1e-6}  # BYOT-U's train.py
    specs = {"alpha": fraction, "temperature": positive_float, "feature_weight": non_negative_float}

    def __init__(self, name, config=None):
        super().__init__(name, config)
        loss = config.get("loss", None) if config is not None else None
        if loss is not None and (abs(loss.gamma - (1 - self.settings["alpha"])) > 1e-12 or loss.beta != 1):
            warnings.warn(f"BYOT's loss weights the deepest CE by 1 - alpha = {1 - self.settings['alpha']:g} and "
                          f"its term by 1; this config has gamma {loss.gamma:g}, beta {loss.beta:g}", stacklevel=2)

    def heads(self, features, pooled, num_classes: int) -> list[BYOTHead]:
        """The heads for these stage outputs (NHWC) and pooled feature: fixed by the shapes, so `init`, `term`
        and `eval_logits` build the same ones."""
        if len(features) != NUM_HEADS + 1:
            raise UserError(f"BYOT needs a model with {NUM_HEADS + 1} stages, this one has {len(features)}")
        last_size, channels = features[-1].shape[1], pooled.shape[-1]
        heads = []
        for feature in features[:NUM_HEADS]:
            size = feature.shape[1]
            if size % last_size or feature.shape[2] != size:
                raise UserError(f"BYOT's heads need square stage outputs whose size is a multiple of the last "
                                f"stage's ({last_size}); got {tuple(feature.shape)} (NHWC)")
            heads.append(BYOTHead(channels // 4, channels, size // last_size, num_classes))
        return heads

    def module(self, student, teacher) -> Heads:
        heads = self.heads(student.features, student.pooled, student.logits.shape[-1])
        return Heads(tuple((h.bottleneck, h.features, h.stride, h.num_classes) for h in heads))

    def module_inputs(self, student, teacher) -> tuple:
        return (student.features[:NUM_HEADS],)

    def init_variables(self, module, rng, inputs) -> dict:
        """Head i from `jax.random.split(rng, 2)[i]`, the keys BYOT's runs have always used."""
        return nested({name: BYOTHead(*fields).init(key, feature, train=False) for name, fields, feature, key
                       in zip(HEAD_NAMES, module.heads, inputs[0], jax.random.split(rng, NUM_HEADS))})

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        alpha, temperature = self.settings["alpha"], self.settings["temperature"]
        outputs, batch_stats = self.apply_module_of(variables, student, teacher, train)
        total, metrics = jnp.zeros((), jnp.float32), {}
        for name, (logits, feature) in zip(HEAD_NAMES, outputs):
            ce = (cross_entropy(logits, batch.labels) if batch.partners is None
                  else mixed_cross_entropy(logits, batch.labels, batch.partners, batch.lam))
            soft_ce = soft_cross_entropy(logits, student.logits, temperature)
            distance = feature_loss(feature, student.pooled)
            total = total + ((1 - alpha) * ce + alpha * temperature ** 2 * soft_ce
                             + self.settings["feature_weight"] * distance)
            metrics.update({f"{name}_ce": ce, f"{name}_soft_ce": soft_ce, f"{name}_feature": distance})
        return TermOutput(total, metrics, batch_stats)

    def eval_logits(self, variables, student, images) -> dict:
        """The shallow heads' logits in eval mode (running statistics): {"head1": ..., "head2": ...}."""
        outputs, _ = self.apply_module_of(variables, student, None, train=False)
        return {name: logits for name, (logits, _) in zip(HEAD_NAMES, outputs)}
