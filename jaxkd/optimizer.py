"""The seed's (and CRD's) optimizer: SGD with momentum and PyTorch-coupled weight decay, step-decayed lr.

PyTorch SGD computes d = g + wd * p, buf = momentum * buf + d (buf = d on the first step), p -= lr * buf.
`add_decayed_weights` then `sgd(momentum)` is exactly that (optax's trace starts at zero, so its first value is
d). Weight decay covers every trainable tensor, BN scales and biases included, as in the seed.
"""

import optax

from jaxkd.errors import UserError

LR_SCALINGS = ("none", "linear")


def learning_rate_schedule(base_lr: float, decay_epochs, decay_rate: float, steps_per_epoch: int):
    """lr = base_lr * decay_rate^k once k of `decay_epochs` are complete: the first step of epoch 151 (1-based)
    already uses 0.005 for decay at 150, RepDistiller's semantics."""
    return optax.piecewise_constant_schedule(
        base_lr, {int(epoch) * steps_per_epoch: decay_rate for epoch in sorted(decay_epochs)})


def base_learning_rate(config) -> float:
    """`config.optimizer.lr`, or with `lr_scaling="linear"` that lr times batch_size / lr_reference_batch
    (Goyal et al. 2017's rule for large global batches; no warm-up is added). Off by default: the seed's
    recipe is lr 0.05 at batch 64."""
    opt = config.optimizer
    if opt.lr_scaling not in LR_SCALINGS:
        raise UserError(f"optimizer.lr_scaling must be one of {', '.join(LR_SCALINGS)}, got {opt.lr_scaling!r}")
    if opt.lr_scaling == "linear":
        if opt.lr_reference_batch < 1:
            raise UserError(f"optimizer.lr_reference_batch must be positive, got {opt.lr_reference_batch}")
        return opt.lr * config.batch_size / opt.lr_reference_batch
    return opt.lr


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD from `config.optimizer` (lr with its scaling, momentum, nesterov, weight_decay, lr_decay_epochs,
    lr_decay_rate)."""
    opt = config.optimizer
    schedule = learning_rate_schedule(base_learning_rate(config), opt.lr_decay_epochs, opt.lr_decay_rate,
                                      steps_per_epoch)
    return optax.chain(
        optax.add_decayed_weights(opt.weight_decay),
        optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov),
    )
