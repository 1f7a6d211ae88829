"""AB: knowledge transfer via distillation of activation boundaries (Heo et al., AAAI 2019), as RepDistiller runs
it (`--distill abound`; `distiller_zoo/AB.py` `ABLoss`, `models/util.py` `Connector`, `train_student.py`,
`helper/pretrain.py` `init`); docs/methods.md, "What each term is": AB.

- Connectors map the student's pre-activation stage outputs (`preact_features`, RepDistiller's feat[1:-1] with
  preact=True) onto the teacher's: the identity where channels and height agree, else `ConvReg` without its ReLU
  (conv + BN), PyTorch's default init.
- The loss, per stage i of n: w_i = 2^(i - n + 1) times sum over elements of (s + m)^2 [s > -m, t <= 0]
  + (s - m)^2 [s <= m, t > 0], divided by the batch size and by 1000 / 3; summed over stages (margin m = 1).
- It trains only in the init stage (the connectors and the student's feature modules); in training RepDistiller's
  AB term is 0 (`train_distill`: loss_kd = 0) and the connectors are frozen: the student learns from CE alone.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxkd.config.specs import non_negative_float, non_negative_int
from jaxkd.errors import UserError
from jaxkd.methods.base import INIT_MODULES, InitStage, Method, MethodInit, apply_module, nested
from jaxkd.models.heads import ConvReg


def ab_loss(student_maps, teacher_maps, margin: float) -> jax.Array:
    """RepDistiller's `ABLoss` summed over stages: the margin loss of the connected student maps against the
    teacher's pre-activation maps."""
    count, batch = len(student_maps), student_maps[0].shape[0]
    total = jnp.zeros((), jnp.float32)
    for i, (s, t) in enumerate(zip(student_maps, teacher_maps)):
        inactive = (jnp.square(s + margin) * ((s > -margin) & (t <= 0))
                    + jnp.square(s - margin) * ((s <= margin) & (t > 0)))
        total += 2.0 ** (i - count + 1) * jnp.sum(jnp.abs(inactive)) / batch / 1000 * 3
    return total


def connector(student_shape, teacher_shape) -> tuple | None:
    """RepDistiller's `Connector` for one stage as ConvReg's fields (kind, features, kernel size, no ReLU), or
    None where it is the identity (channels and height agree)."""
    if (student_shape[3], student_shape[1]) == (teacher_shape[3], teacher_shape[1]):
        return None
    reg = ConvReg.between(student_shape, teacher_shape, use_relu=False)
    return reg.kind, reg.features, reg.kernel_size, reg.use_relu


class Connectors(nn.Module):
    """AB's init-stage modules: a connector per stage, `connector{i}` (none where it is the identity); called on
    the student's pre-activation stage outputs, returns the connected maps."""

    connectors: tuple  # per stage: `connector`'s fields or None

    @nn.compact
    def __call__(self, maps, train: bool):
        return [x if fields is None else ConvReg(*fields, name=f"connector{i}")(x, train=train)
                for i, (fields, x) in enumerate(zip(self.connectors, maps))]


class AB(Method):
    display_name = "AB"
    uses_teacher = True
    defaults = {"margin": 1.0, "init_epochs": 30}  # ABLoss's margin; RepDistiller's --init_epochs
    specs = {"margin": non_negative_float, "init_epochs": non_negative_int}

    def connectors(self, student, teacher) -> Connectors:
        s_maps, t_maps = student.preact_features, teacher.preact_features
        if not s_maps or not t_maps or len(s_maps) != len(t_maps):
            raise UserError(f"abound needs the same number of pre-activation stage outputs in student and teacher "
                            f"(got {len(s_maps or [])} and {len(t_maps or [])})")
        return Connectors(tuple(connector(s.shape, t.shape) for s, t in zip(s_maps, t_maps)))

    def init(self, rng, probe) -> MethodInit:
        """No trainable module in training: the connectors are init-stage modules, in the method state.
        Connector i from `split(rng, stages)[i]`, the keys AB's runs have always used."""
        connectors = self.connectors(probe.student, probe.teacher).connectors
        keys = jax.random.split(rng, len(connectors))
        return MethodInit(state={INIT_MODULES: nested({
            f"connector{i}": ConvReg(*fields).init(key, x, train=False)
            for i, (fields, x, key) in enumerate(zip(connectors, probe.student.preact_features, keys))
            if fields is not None})})

    def init_stage(self, config) -> InitStage:
        return InitStage(self.settings["init_epochs"], student_features=True, learning_rate=config.optimizer.lr)

    def init_loss(self, modules, student, teacher, batch):
        outputs, batch_stats = apply_module(self.connectors(student, teacher), modules, student.preact_features,
                                            train=True)
        return ab_loss(outputs, teacher.preact_features, self.settings["margin"]), batch_stats
