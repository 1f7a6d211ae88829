"""The lr schedule against transcriptions of the two references' decay rules, stepped side by side."""

import numpy as np
import pytest

from configs import default
from jaxkd.engine.optimizer import config_learning_rate_schedule, make_optimizer
from jaxkd.errors import UserError

EPOCHS, LR, DECAY_EPOCHS, RATE = 240, 0.05, (150, 180, 210), 0.1


def pytorch_kd_lrs(steps_per_epoch: int) -> list[float]:
    """pytorch-kd exp/baseline.py's loop with utils/optimizer.py's decay_lr: `train(..., epoch + 1)`, and in it
    `optimizer.step()` (at the current lr) then `decay_lr(optimizer, epoch, iteration=i)`, which multiplies the
    lr by 0.1 when `epoch in [150, 180, 210] and iteration == 0`. Returns the lr of every optimizer step."""
    lr, used = LR, []
    for epoch in range(EPOCHS):
        epoch_1_based = epoch + 1
        for i in range(steps_per_epoch):
            used.append(lr)  # optimizer.step()
            if epoch_1_based in DECAY_EPOCHS and i == 0:  # decay_lr -> stepwise_decay
                lr = lr * RATE
    return used


def repdistiller_lrs(steps_per_epoch: int) -> list[float]:
    """RepDistiller train_student.py: `for epoch in range(1, epochs + 1): adjust_learning_rate(epoch, ...)`,
    then the epoch's steps; adjust_learning_rate sets lr * rate ** sum(epoch > decay_epochs) when that sum > 0."""
    lr, used = LR, []
    for epoch in range(1, EPOCHS + 1):
        steps = np.sum(epoch > np.asarray(DECAY_EPOCHS))
        if steps > 0:
            lr = LR * (RATE ** steps)
        used.extend([lr] * steps_per_epoch)
    return used


def _schedule(timing: str, steps_per_epoch: int):
    config = default.get_config()
    config.optimizer.lr, config.optimizer.lr_decay_epochs = LR, DECAY_EPOCHS
    config.optimizer.lr_decay_rate, config.optimizer.lr_decay_timing = RATE, timing
    return config_learning_rate_schedule(config, steps_per_epoch)


@pytest.mark.parametrize("timing, reference, steps_per_epoch", [
    ("pytorch_kd", pytorch_kd_lrs, 781), ("repdistiller", repdistiller_lrs, 781),
    ("repdistiller", repdistiller_lrs, 782)])
def test_every_step_of_a_240_epoch_run_has_the_references_lr(timing, reference, steps_per_epoch):
    expected = np.asarray(reference(steps_per_epoch), np.float32)  # the float32 parameters see this value
    ours = np.asarray(_schedule(timing, steps_per_epoch)(np.arange(EPOCHS * steps_per_epoch)))
    assert ours.dtype == np.float32 and len(ours) == len(expected) == EPOCHS * steps_per_epoch
    np.testing.assert_array_equal(ours, expected)
    # where the first decay lands (0-based steps): after step 0 of epoch 150, or at the start of epoch 151
    first_decay = 149 * steps_per_epoch + 1 if timing == "pytorch_kd" else 150 * steps_per_epoch
    assert ours[first_decay - 1] == np.float32(LR) and ours[first_decay] == np.float32(LR * RATE)


def test_the_two_timings_differ_by_all_but_one_step_of_each_decay_epoch():
    pytorch_kd, repdistiller = _schedule("pytorch_kd", 781), _schedule("repdistiller", 781)
    steps = np.arange(EPOCHS * 781)
    differ = np.flatnonzero(np.asarray(pytorch_kd(steps)) != np.asarray(repdistiller(steps)))
    assert len(differ) == 3 * 780  # 2,340 steps of a pytorch-kd run at 10x its lr under RepDistiller's timing
    assert differ[0] == 149 * 781 + 1 and differ[-1] == 210 * 781 - 1


@pytest.mark.parametrize("timing", ["pytorch_kd", "repdistiller"])
def test_the_optimizer_applies_the_scheduled_lr(timing):
    config = default.get_config()
    config.optimizer.lr_decay_epochs, config.optimizer.lr_decay_timing = (2,), timing
    config.optimizer.momentum, config.optimizer.weight_decay = 0.0, 0.0
    optimizer = make_optimizer(config, steps_per_epoch=3)
    params = {"w": np.zeros(1, np.float32)}
    state, applied = optimizer.init(params), []
    for _ in range(9):
        updates, state = optimizer.update({"w": np.ones(1, np.float32)}, state, params)
        applied.append(-float(updates["w"][0]))
    undecayed = 4 if timing == "pytorch_kd" else 6  # epoch 2 is steps 3..5: pytorch-kd decays after its first step
    expected = [float(np.float32(0.05))] * undecayed + [float(np.float32(0.05 * 0.1))] * (9 - undecayed)
    assert applied == expected


@pytest.mark.parametrize("epochs, timing", [((0, 150), "pytorch_kd"), ((150, 150), "repdistiller"), ((150,), "torch")])
def test_decay_settings_that_no_reference_defines_are_refused(epochs, timing):
    config = default.get_config()
    config.optimizer.lr_decay_epochs, config.optimizer.lr_decay_timing = epochs, timing
    with pytest.raises(UserError, match="lr_decay_epochs must be distinct 1-based epochs|lr_decay_timing must be"):
        make_optimizer(config, steps_per_epoch=10)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_pytorch_sgd_with_momentum_weight_decay_and_nesterov(nesterov):
    """`make_optimizer` against `torch.optim.SGD(lr, momentum, weight_decay, nesterov)` on a small parameter
    vector for a few steps with changing gradients, across an lr decay: the same parameters up to float32
    rounding. The two settings of nesterov end far apart, so each is checked."""
    import torch

    config = default.get_config()
    config.optimizer.lr, config.optimizer.momentum, config.optimizer.weight_decay = 0.1, 0.9, 5e-2
    config.optimizer.nesterov = nesterov
    config.optimizer.lr_decay_epochs, config.optimizer.lr_decay_timing = (2,), "repdistiller"
    rng = np.random.default_rng(0)
    start = rng.normal(size=7).astype(np.float32)
    grads = rng.normal(size=(9, 7)).astype(np.float32)
    optimizer = make_optimizer(config, steps_per_epoch=3)  # the lr drops to 0.01 from step 6 (epoch 3)
    params = {"w": start}
    state = optimizer.init(params)
    weight = torch.nn.Parameter(torch.from_numpy(start.copy()))
    reference = torch.optim.SGD([weight], lr=0.1, momentum=0.9, weight_decay=5e-2, nesterov=nesterov)
    for step, grad in enumerate(grads):
        updates, state = optimizer.update({"w": grad}, state, params)
        params = {"w": params["w"] + np.asarray(updates["w"])}
        for group in reference.param_groups:
            group["lr"] = 0.1 if step < 6 else 0.1 * 0.1
        weight.grad = torch.from_numpy(grad.copy())
        reference.step()
        np.testing.assert_allclose(params["w"], weight.detach().numpy(), rtol=1e-6, atol=1e-7, err_msg=str(step))
    other = default.get_config()
    other.optimizer.lr, other.optimizer.momentum, other.optimizer.weight_decay = 0.1, 0.9, 5e-2
    other.optimizer.nesterov = not nesterov
    other.optimizer.lr_decay_epochs, other.optimizer.lr_decay_timing = (2,), "repdistiller"
    other_optimizer = make_optimizer(other, steps_per_epoch=3)
    other_params = {"w": start}
    other_state = other_optimizer.init(other_params)
    for grad in grads:
        updates, other_state = other_optimizer.update({"w": grad}, other_state, other_params)
        other_params = {"w": other_params["w"] + np.asarray(updates["w"])}
    assert np.max(np.abs(other_params["w"] - params["w"])) > 1e-2  # nesterov is not ignored


def test_nesterov_without_momentum_is_refused():
    """PyTorch's SGD refuses nesterov without momentum (there is nothing to look ahead with)."""
    config = default.get_config()
    config.optimizer.momentum, config.optimizer.nesterov = 0.0, True
    with pytest.raises(UserError, match=r"optimizer.nesterov needs momentum > 0 \(got momentum 0.0\)"):
        make_optimizer(config, steps_per_epoch=10)
