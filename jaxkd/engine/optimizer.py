"""The seed's (and CRD's) optimizer: SGD with momentum and PyTorch-coupled weight decay, step-decayed lr.

PyTorch SGD computes d = g + wd * p, buf = momentum * buf + d (buf = d on the first step), p -= lr * buf.
`add_decayed_weights` then `sgd(momentum)` is exactly that (optax's trace starts at zero, so its first value is
d). Weight decay covers every trainable tensor, BN scales and biases included, as in the seed.

When the lr drops (`config.optimizer.lr_decay_timing`) follows one of the two references, which differ:
* "pytorch_kd" (pytorch-kd `utils/optimizer.py` `stepwise_decay`, called after each `optimizer.step()` with the
  1-based epoch): the lr is multiplied by the rate after the first step of each named epoch, so that epoch's
  remaining steps already run at the lower lr (decay at 150: from 0-based step 149 * steps_per_epoch + 1).
* "repdistiller" (RepDistiller `helper/util.py` `adjust_learning_rate`, called at the start of each 1-based
  epoch): lr = base * rate ** (number of named epochs before the current one), so the decay at 150 starts
  with the first step of epoch 151 (0-based step 150 * steps_per_epoch).

With `optimizer.dot`, DOT instead (jaxkd/engine/dot.py): one momentum buffer for the task loss's gradient and one
for the distillation loss's, at momentum -/+ `dot_delta`.
"""

import jax.numpy as jnp
import numpy as np
import optax

from jaxkd.engine.dot import check_dot_settings, dot_optimizer, uses_dot
from jaxkd.errors import UserError

LR_SCALINGS = ("none", "linear")
LR_DECAY_TIMINGS = ("pytorch_kd", "repdistiller")


def decay_steps(decay_epochs, steps_per_epoch: int, timing: str) -> list[int]:
    """The 0-based step from which each decay of `decay_epochs` (1-based epochs) applies, under `timing`."""
    if timing not in LR_DECAY_TIMINGS:
        raise UserError(f"optimizer.lr_decay_timing must be one of {', '.join(LR_DECAY_TIMINGS)}, got {timing!r}")
    epochs = [int(epoch) for epoch in decay_epochs]
    if any(epoch < 1 for epoch in epochs) or len(set(epochs)) != len(epochs):
        raise UserError(f"optimizer.lr_decay_epochs must be distinct 1-based epochs, got {tuple(decay_epochs)}")
    if timing == "pytorch_kd":
        return sorted((epoch - 1) * steps_per_epoch + 1 for epoch in epochs)
    return sorted(epoch * steps_per_epoch for epoch in epochs)


def decayed_learning_rates(base_lr: float, decay_rate: float, num_decays: int, timing: str) -> np.ndarray:
    """float32 (num_decays + 1,): the lr after k decays, computed in float64 with each reference's arithmetic
    (the seed multiplies the current lr by the rate, RepDistiller raises the rate to the power k), then held in
    float32 like the parameters it scales."""
    rates = [base_lr]
    for k in range(1, num_decays + 1):
        rates.append(rates[-1] * decay_rate if timing == "pytorch_kd" else base_lr * decay_rate ** k)
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
