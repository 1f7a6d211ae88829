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

import jax
import jax.numpy as jnp

from jaxkd.config.specs import non_negative_float, non_negative_int
from jaxkd.errors import UserError
from jaxkd.methods.base import INIT_MODULES, InitStage, Method, MethodInit, apply_module
from jaxkd.models.heads import ConvReg


def ab_loss(student_maps, teacher_maps, margin: float) -> jax.Array:
    """RepDistiller's `ABLoss` summed over stages: the margin loss of the connected student maps against the
    teacher's pre-activation maps (no gradient to the teacher)."""
    count, batch = len(student_maps), student_maps[0].shape[0]
    total = jnp.zeros((), jnp.float32)
    for i, (s, t) in enumerate(zip(student_maps, teacher_maps)):
        s, t = s.astype(jnp.float32), jax.lax.stop_gradient(t.astype(jnp.float32))
        inactive = (jnp.square(s + margin) * ((s > -margin) & (t <= 0))
                    + jnp.square(s - margin) * ((s <= margin) & (t > 0)))
        total += 2.0 ** (i - count + 1) * jnp.sum(jnp.abs(inactive)) / batch / 1000 * 3
    return total


class AB(Method):
    uses_teacher = True
    defaults = {"margin": 1.0, "init_epochs": 30}  # ABLoss's margin; RepDistiller's --init_epochs
    specs = {"margin": non_negative_float, "init_epochs": non_negative_int}

    def connectors(self, student, teacher) -> list:
        """One ConvReg (no ReLU) per stage, or None where RepDistiller's Connector is the identity."""
        s_maps, t_maps = student.preact_features, teacher.preact_features
        if not s_maps or not t_maps or len(s_maps) != len(t_maps):
            raise UserError(f"abound needs the same number of pre-activation stage outputs in student and teacher "
                            f"(got {len(s_maps or [])} and {len(t_maps or [])})")
        return [None if (s.shape[3], s.shape[1]) == (t.shape[3], t.shape[1]) else
                ConvReg.between(s.shape, t.shape, use_relu=False) for s, t in zip(s_maps, t_maps)]

    def connected(self, modules: dict, student, teacher, train: bool):
        """(the connectors' outputs, their updated batch statistics)."""
        outputs, batch_stats = [], {}
        for i, (connector, s) in enumerate(zip(self.connectors(student, teacher), student.preact_features)):
            if connector is None:
                outputs.append(s)
                continue
            name = f"connector{i}"
            out, batch_stats[name] = apply_module(
                connector, {"params": modules["params"][name], "batch_stats": modules["batch_stats"][name]},
                s.astype(jnp.float32), train=train)
            outputs.append(out)
        return outputs, batch_stats

    def init(self, rng, probe) -> MethodInit:
        params, batch_stats = {}, {}
        connectors = self.connectors(probe.student, probe.teacher)
        for i, (connector, rng_i) in enumerate(zip(connectors, jax.random.split(rng, len(connectors)))):
            if connector is not None:
                variables = connector.init(rng_i, probe.student.preact_features[i].astype(jnp.float32), train=False)
                params[f"connector{i}"], batch_stats[f"connector{i}"] = variables["params"], variables["batch_stats"]
        return MethodInit(state={INIT_MODULES: {"params": params, "batch_stats": batch_stats}})

    def init_stage(self, config) -> InitStage:
        return InitStage(self.settings["init_epochs"], student_features=True, learning_rate=config.optimizer.lr)

    def init_loss(self, modules, student, teacher, batch):
        outputs, batch_stats = self.connected(modules, student, teacher, train=True)
        return ab_loss(outputs, teacher.preact_features, self.settings["margin"]), batch_stats
