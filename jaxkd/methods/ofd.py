"""OFD: a comprehensive overhaul of feature distillation (Heo et al., ICCV 2019), as mdistiller's
`mdistiller/distillers/OFD.py` runs it (`OFD.init_ofd_modules`, `ConnectorConvBN`, `feat_loss`, `OFD.ofd_loss`,
`OFD.train`), whose margin is the official clovaai/overhaul-distillation `CIFAR-100/distiller.py`
`get_margin_from_BN`; docs/methods.md, "What each term is": OFD.

- Margins: per channel of the BN right before each of the teacher's stage ReLUs (its model's `bn_before_relu`,
  mdistiller's `get_bn_before_relu`), with s = |weight| and m = bias, the mean of the negative part of N(m, s^2),
  m - s pdf(m / s) / cdf(-m / s), or -3 s where cdf(-m / s) <= 0.001. Constants of the teacher: computed once at
  init from its variables and kept as the method's state (checkpointed with the run).
- Connectors: per stage pair, a k x k conv (k = 1, no bias, N(0, 2 / (k k C_t))) and a BN (1 / 0) from the
  student's pre-ReLU stage output to the teacher's channels; trained with the student, in train mode.
- The term: the stage lists aligned on their last min(S, T) entries; per stage i of n, the partial L2 between
  connector(s) and the teacher's pre-ReLU map t (adaptive-average-pooled to the student's size), summed over
  C, H, W and averaged over the batch: (s - m)^2 where s > m >= t, (s - t)^2 where s > t > m and t <= 0, and
  (s - t)^2 where t > 0; weighted 1 / 2^(n - 1 - i) and summed (logged per stage, weighted, as `ofd_stage{i}`).
  The engine's beta is mdistiller's FEAT_WEIGHT.
- The teacher runs in train mode (batch statistics), as mdistiller's `OFD.train` and the official
  `train_with_distillation.py` leave it (`ofd.teacher_train_mode`).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from jaxkd.config.specs import Number, flag
from jaxkd.errors import UserError
from jaxkd.methods.base import Method, MethodInit, TermOutput
from jaxkd.methods.pooling import adaptive_avg_pool2d
from jaxkd.models.torch_layers import batch_norm, conv, kaiming_fan_out

MARGIN_CDF_FLOOR = 0.001  # get_margin_from_BN: below this mass of the negative part, the margin is -3 s


def margin_from_bn(scale: jax.Array, bias: jax.Array) -> jax.Array:
    """The official `get_margin_from_BN` on a BN's weight and bias, per channel (float32, as its result)."""
    std, mean = jnp.abs(scale), bias
    ratio = -mean / std
    cdf = ndtr(ratio)
    negative_mean = -std * jnp.exp(-jnp.square(ratio) / 2) / math.sqrt(2 * math.pi) / jnp.maximum(cdf, 1e-30) + mean
    return jnp.where(cdf > MARGIN_CDF_FLOOR, negative_mean, -3 * std)


def teacher_margins(teacher_model, teacher_variables) -> list:
    """The margins of the BNs the teacher's family names (`bn_before_relu`), one (C,) array per stage; a family
    without the lookup is a one-line UserError."""
    if teacher_model is None or teacher_variables is None:
        raise UserError("ofd needs the teacher's model and variables for its margins (Probe.teacher_model, "
                        "Probe.teacher_variables)")
    lookup = getattr(teacher_model, "bn_before_relu", None)
    if lookup is None:
        raise UserError(f"ofd: no BN-before-ReLU lookup for the teacher {type(teacher_model).__name__} (known: "
                        f"the seed's ResNets/WRNs, RepDistiller's resnets, ResNet50, vgg, MobileNetV2)")
    bns = []
    for path in lookup():
        bn = teacher_variables["params"]
        for name in path:
            bn = bn[name]
        bns.append(bn)
    # one jitted computation over every channel (op by op, each BN's size would compile its own small programs)
    margins = jax.jit(margin_from_bn)(jnp.concatenate([bn["scale"] for bn in bns]),
                                      jnp.concatenate([bn["bias"] for bn in bns]))
    return jnp.split(margins, np.cumsum([bn["scale"].shape[0] for bn in bns])[:-1].tolist())


def aligned(*lists) -> list:
    """mdistiller's `OFD._align_list`: each list's last min(lengths) entries."""
    count = min(len(items) for items in lists)
    return [list(items)[len(items) - count:] for items in lists]


def partial_l2(student: jax.Array, teacher: jax.Array, margin: jax.Array) -> jax.Array:
    """mdistiller's `feat_loss`: the partial L2 summed over C, H, W, averaged over the batch (every element is
    non-negative, so its `abs` is left out)."""
    loss = (jnp.square(student - margin) * ((student > margin) & (teacher <= margin))
            + jnp.square(student - teacher) * ((student > teacher) & (teacher > margin) & (teacher <= 0))
            + jnp.square(student - teacher) * (teacher > 0))
    return jnp.sum(loss) / student.shape[0]


class Connectors(nn.Module):
    """mdistiller's `ConnectorConvBN`: `connector{i}` = conv (k x k, padding (k - 1) / 2, no bias) + BN, from the
    student's stage i to the teacher's channels."""

    channels: tuple  # the teacher's channels per aligned stage
    kernel_size: int = 1

    @nn.compact
    def __call__(self, maps, train: bool):
        outputs = []
        for i, (x, channels) in enumerate(zip(maps, self.channels)):
            x = conv(x, channels, self.kernel_size, f"connector{i}_conv", padding=(self.kernel_size - 1) // 2,
                     kernel_init=kaiming_fan_out)
            outputs.append(batch_norm(x, f"connector{i}_bn", train))
        return outputs


class OFD(Method):
    display_name = "OFD"
    uses_teacher = True
    # mdistiller's CFG.OFD.CONNECTOR.KERNEL_SIZE; the teacher's mode in training (mdistiller's `OFD.train` puts
    # every child in train mode, the teacher too; the official train_with_distillation.py calls t_net.train()).
    # CE_WEIGHT 1 and FEAT_WEIGHT 0.001 are loss.gamma and loss.beta.
    defaults = {"connector_kernel_size": 1, "teacher_train_mode": True}
    specs = {"connector_kernel_size": Number(True, 1), "teacher_train_mode": flag}

    def __init__(self, name: str, config=None):
        super().__init__(name, config)
        if self.settings["connector_kernel_size"] % 2 == 0:
            raise UserError(f"--config.{name}.connector_kernel_size={self.settings['connector_kernel_size']}: must "
                            "be odd (its padding (k - 1) / 2 keeps the student's size only then)")

    @property
    def teacher_train_mode(self) -> bool:
        return self.settings["teacher_train_mode"]

    def stage_pairs(self, student, teacher) -> tuple[list, list]:
        """(the student's, the teacher's) pre-ReLU stage outputs, aligned on the last min(S, T)."""
        if not student.preact_features or not teacher.preact_features:
            raise UserError("ofd needs pre-ReLU stage outputs (preact_features) of both models")
        return tuple(aligned(student.preact_features, teacher.preact_features))

    def module(self, student, teacher) -> Connectors:
        return Connectors(tuple(t.shape[-1] for t in self.stage_pairs(student, teacher)[1]),
                          self.settings["connector_kernel_size"])

    def module_inputs(self, student, teacher) -> tuple:
        return (self.stage_pairs(student, teacher)[0],)

    def init(self, rng, probe) -> MethodInit:
        """The connectors, and the margins of the teacher's BNs as the state (`{"margins": [...]}`, aligned with
        the teacher's maps the term reads: the last min(S, T) BNs)."""
        margins = teacher_margins(probe.teacher_model, probe.teacher_variables)
        teacher_maps = probe.teacher.preact_features or []
        if len(margins) != len(teacher_maps) or any(m.shape[0] != t.shape[-1] for m, t in zip(margins, teacher_maps)):
            raise UserError(f"ofd: the teacher's BNs before its ReLUs ({[m.shape[0] for m in margins]} channels) do "
                            f"not match its pre-ReLU stage outputs ({[t.shape[-1] for t in teacher_maps]})")
        count = len(self.stage_pairs(probe.student, probe.teacher)[0])
        return MethodInit(super().init(rng, probe).variables, {"margins": margins[len(margins) - count:]})

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        connected, batch_stats = self.apply_module_of(variables, student, teacher, train)
        teacher_maps = self.stage_pairs(student, teacher)[1]
        count, total, metrics = len(connected), jnp.zeros((), jnp.float32), {}
        for i, (s, t, margin) in enumerate(zip(connected, teacher_maps, state["margins"])):
            if t.shape[1:3] != s.shape[1:3]:
                t = adaptive_avg_pool2d(t, s.shape[1], s.shape[2])
            metrics[f"stage{i + 1}"] = partial_l2(s, t, margin) / 2.0 ** (count - i - 1)  # they add up to the term
            total = total + metrics[f"stage{i + 1}"]
        return TermOutput(total, metrics=metrics, batch_stats=batch_stats)
