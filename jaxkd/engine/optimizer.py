"""The seed's (and CRD's) optimizer: SGD with momentum and PyTorch-coupled weight decay, step-decayed lr.

PyTorch SGD computes d = g + wd * p, buf = momentum * buf + d (buf = d on the first step), p -= lr * buf.
`add_decayed_weights` then `sgd(momentum)` is exactly that (optax's trace starts at zero, so its first value is
d). Weight decay covers every trainable tensor, BN scales and biases included, as in the seed.

When the lr drops (`config.optimizer.lr_decay_timing`) follows one of the two references, which differ:
* "seed" (pytorch-kd `utils/optimizer.py` `stepwise_decay`, called after each `optimizer.step()` with the
  1-based epoch): the lr is multiplied by the rate after the first step of each named epoch, so that epoch's
  remaining steps already run at the lower lr (decay at 150: from 0-based step 149 * steps_per_epoch + 1).
* "repdistiller" (RepDistiller `helper/util.py` `adjust_learning_rate`, called at the start of each 1-based
  epoch): lr = base * rate ** (number of named epochs before the current one), so the decay at 150 starts
  with the first step of epoch 151 (0-based step 150 * steps_per_epoch).

With `optimizer.dot`, DOT (mdistiller's `DistillationOrientedTrainer`, `dot_optimizer`): one momentum buffer for
the task loss's gradient and one for the distillation loss's, at momentum -/+ `dot_delta`; its `update` takes both
gradients and which losses reach each leaf (`DotGradients`, made by `jaxkd.engine.step.dot_gradients`).
"""

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxkd.errors import UserError

LR_SCALINGS = ("none", "linear")
LR_DECAY_TIMINGS = ("seed", "repdistiller")


def decay_steps(decay_epochs, steps_per_epoch: int, timing: str) -> list[int]:
    """The 0-based step from which each decay of `decay_epochs` (1-based epochs) applies, under `timing`."""
    if timing not in LR_DECAY_TIMINGS:
        raise UserError(f"optimizer.lr_decay_timing must be one of {', '.join(LR_DECAY_TIMINGS)}, got {timing!r}")
    epochs = [int(epoch) for epoch in decay_epochs]
    if any(epoch < 1 for epoch in epochs) or len(set(epochs)) != len(epochs):
        raise UserError(f"optimizer.lr_decay_epochs must be distinct 1-based epochs, got {tuple(decay_epochs)}")
    if timing == "seed":
        return sorted((epoch - 1) * steps_per_epoch + 1 for epoch in epochs)
    return sorted(epoch * steps_per_epoch for epoch in epochs)


def decayed_learning_rates(base_lr: float, decay_rate: float, num_decays: int, timing: str) -> np.ndarray:
    """float32 (num_decays + 1,): the lr after k decays, computed in float64 with each reference's arithmetic
    (the seed multiplies the current lr by the rate, RepDistiller raises the rate to the power k), then held in
    float32 like the parameters it scales."""
    rates = [base_lr]
    for k in range(1, num_decays + 1):
        rates.append(rates[-1] * decay_rate if timing == "seed" else base_lr * decay_rate ** k)
    return np.asarray(rates, np.float64).astype(np.float32)


def learning_rate_schedule(base_lr: float, decay_epochs, decay_rate: float, steps_per_epoch: int, timing: str):
    """schedule(step) -> float32 lr of the 0-based train step `step`, or of each step of an array of them
    (jittable: a table lookup, no host sync)."""
    boundaries = jnp.asarray(decay_steps(decay_epochs, steps_per_epoch, timing), jnp.int32)
    rates = jnp.asarray(decayed_learning_rates(base_lr, decay_rate, len(boundaries), timing))

    def schedule(step):
        return rates[jnp.sum(jnp.asarray(step)[..., None] >= boundaries, axis=-1)]

    return schedule


def base_learning_rate(config) -> float:
    """`config.optimizer.lr`, or with `lr_scaling="linear"` that lr times batch_size / lr_reference_batch
    (Goyal et al. 2017's rule for large global batches; no warm-up is added). Off by default: the seed's
    recipe is lr 0.05 at batch 64."""
    opt = config.optimizer
    if not opt.lr > 0 or not 0 <= opt.momentum < 1 or opt.weight_decay < 0 or not 0 < opt.lr_decay_rate <= 1:
        raise UserError(f"optimizer: lr must be positive, momentum in [0, 1), weight_decay non-negative and "
                        f"lr_decay_rate in (0, 1]; got lr {opt.lr}, momentum {opt.momentum}, weight_decay "
                        f"{opt.weight_decay}, lr_decay_rate {opt.lr_decay_rate}")
    if opt.lr_scaling not in LR_SCALINGS:
        raise UserError(f"optimizer.lr_scaling must be one of {', '.join(LR_SCALINGS)}, got {opt.lr_scaling!r}")
    if opt.lr_scaling == "linear":
        if opt.lr_reference_batch < 1:
            raise UserError(f"optimizer.lr_reference_batch must be positive, got {opt.lr_reference_batch}")
        return opt.lr * config.batch_size / opt.lr_reference_batch
    return opt.lr


def config_learning_rate_schedule(config, steps_per_epoch: int):
    """The lr schedule of `config.optimizer` (lr with its scaling, lr_decay_epochs, lr_decay_rate,
    lr_decay_timing) at `steps_per_epoch`; what the optimizer applies and what metrics.jsonl reports."""
    opt = config.optimizer
    return learning_rate_schedule(base_learning_rate(config), opt.lr_decay_epochs, opt.lr_decay_rate,
                                  steps_per_epoch, opt.lr_decay_timing)


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD from `config.optimizer`: the schedule of `config_learning_rate_schedule`, momentum, nesterov and
    weight_decay. Nesterov is PyTorch's (`SGD(nesterov=True)`: p -= lr * (d + momentum * buf)), which optax's
    `sgd(nesterov=True)` computes exactly; like PyTorch, it needs momentum. With `optimizer.dot`, DOT
    (`dot_optimizer`, momentum -/+ `dot_delta`), whose `update` takes the two losses' gradients (`DotGradients`)."""
    opt = config.optimizer
    if uses_dot(config):
        check_dot_settings(opt.momentum, opt.dot_delta, opt.nesterov)
        return dot_optimizer(config_learning_rate_schedule(config, steps_per_epoch), opt.momentum, opt.dot_delta,
                             opt.weight_decay)
    if opt.nesterov and not opt.momentum:
        raise UserError(f"optimizer.nesterov needs momentum > 0 (got momentum {opt.momentum}), as in PyTorch's SGD")
    return optax.chain(
        optax.add_decayed_weights(opt.weight_decay),
        optax.sgd(config_learning_rate_schedule(config, steps_per_epoch), momentum=opt.momentum or None,
                  nesterov=opt.nesterov),
    )


# ----------------------------------------------------------------------------------------------------------- DOT
def uses_dot(config) -> bool:
    """Whether the run trains with DOT (`optimizer.dot`; configs written before the key existed: no)."""
    return bool(config.optimizer.get("dot", False))


# Which of the two losses reaches a parameter (mdistiller decides it per tensor by whether `loss.backward()` left a
# gradient, `p.grad is not None`): the task loss and the distillation loss, only one of them, or neither.
BOTH, TASK, DISTILL, NEITHER = "both", "task", "distill", "neither"


@flax.struct.dataclass
class DotGradients:
    """What the DOT optimizer updates from, in place of one gradient: the gradient of the task loss (gamma * CE)
    and of the distillation loss (alpha * KD + beta * method term), and for each leaf of the parameters (in
    `jax.tree.leaves` order) which of the two reaches it (BOTH, TASK, DISTILL, NEITHER; static)."""

    task: Any
    distill: Any
    sides: tuple = flax.struct.field(pytree_node=False)


class DotState(NamedTuple):
    """The DOT optimizer's state: steps taken, the task-gradient and the distillation-gradient momentum buffers
    (zeros where a side does not reach the leaf)."""

    count: jax.Array  # int32 scalar
    task_momentum: optax.Params
    distill_momentum: optax.Params


def check_dot_settings(momentum: float, delta: float, nesterov: bool) -> None:
    """DOT's momenta, momentum - dot_delta (task) and momentum + dot_delta (distillation), must both be in [0, 1);
    nesterov is not DOT's (mdistiller's `DistillationOrientedTrainer` has none)."""
    task, distill = momentum - delta, momentum + delta
    if not 0 <= task or not distill < 1:
        raise UserError(f"optimizer.dot_delta {delta} with momentum {momentum}: DOT's task momentum ({task:g}) and "
                        f"distillation momentum ({distill:g}) must both be in [0, 1)")
    if nesterov:
        raise UserError("optimizer.nesterov cannot be combined with optimizer.dot (DOT's momentum is plain SGD's)")


def dot_optimizer(schedule, momentum: float, delta: float, weight_decay: float) -> optax.GradientTransformation:
    """DOT (Zhao et al. 2023), megvii-research/mdistiller `mdistiller/engine/dot.py` (`dot`, with the momenta of
    `trainer.py` `DOT.init_optimizer`): SGD with one momentum buffer for the task gradient (momentum - delta) and
    one for the distillation gradient (momentum + delta); `update` takes a `DotGradients`. Per leaf, by which
    losses reach it:
    * both: task buffer = (m - delta) * buf + (g_task + wd * p); distillation buffer = (m + delta) * buf + g_distill
      (no weight decay: the task side has it);
    * task only: buffer = m' * buf + (g_task + wd * p), m' = ((m - delta) + (m + delta)) / 2;
    * distillation only: buffer = m' * buf + (g_distill + wd * p);
    * neither: no update (no weight decay either).
    On the first step each buffer is its gradient as given, as PyTorch's SGD's, so the distillation-only leaves
    have no weight decay on that step (mdistiller clones the raw gradient before adding it). p -= lr * (task
    buffer + distillation buffer)."""
    task_momentum, distill_momentum = momentum - delta, momentum + delta
    mean_momentum = (distill_momentum + task_momentum) / 2.0  # as mdistiller computes it

    def init(params):
        return DotState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params),
                        jax.tree.map(jnp.zeros_like, params))

    def update(grads: DotGradients, state: DotState, params=None):
        if params is None:
            raise ValueError("the DOT optimizer needs the parameters (weight decay)")
        leaves, treedef = jax.tree.flatten(params)
        task_grads, distill_grads = treedef.flatten_up_to(grads.task), treedef.flatten_up_to(grads.distill)
        task_buffers = treedef.flatten_up_to(state.task_momentum)
        distill_buffers = treedef.flatten_up_to(state.distill_momentum)
        lr, first = schedule(state.count), state.count == 0
        updates, new_task, new_distill = [], [], []
        for p, g_task, g_distill, task_buffer, distill_buffer, side in zip(
                leaves, task_grads, distill_grads, task_buffers, distill_buffers, grads.sides, strict=True):
            update = jnp.zeros_like(p)
            if side in (BOTH, TASK):
                decayed = g_task + weight_decay * p
                rate = task_momentum if side == BOTH else mean_momentum
                task_buffer = jnp.where(first, decayed, rate * task_buffer + decayed)
                update = update - lr * task_buffer
            if side in (BOTH, DISTILL):
                if side == BOTH:
                    later = distill_momentum * distill_buffer + g_distill
                else:
                    later = mean_momentum * distill_buffer + (g_distill + weight_decay * p)
                distill_buffer = jnp.where(first, g_distill, later)
                update = update - lr * distill_buffer
            updates.append(update)
            new_task.append(task_buffer)
            new_distill.append(distill_buffer)
        return (treedef.unflatten(updates), DotState(optax.safe_int32_increment(state.count),
                                                     treedef.unflatten(new_task), treedef.unflatten(new_distill)))

    return optax.GradientTransformation(init, update)
