"""How the host hands train steps to the device: how many per call, which programs, and when it fetches.

One host call runs one train step or `steps_per_dispatch` of them (a `lax.scan`, see
`jaxkd.engine.step.make_train_step`). The loop stops to fetch the metric sums every `log_every_steps` and at each
epoch's end; between two stops it dispatches whole chunks where they fit and single steps for the rest, so a run
compiles at most two train programs. The engine's loop and the bench both follow `dispatch_plan`.
"""

from typing import Callable

AUTO_STEPS_PER_DISPATCH = 20  # on GPU/TPU; H100, KD wrn40_2 -> wrn16_2 at batch 64: 1.17x over 1 (benchmarks/)


def steps_per_dispatch(config, platform: str) -> int:
    """Train steps per host call: `config.steps_per_dispatch`, or for 0 (automatic) 1 on CPU, where the chunk
    gains nothing and its unrolled program multiplies compile time, and elsewhere the largest divisor of
    `log_every_steps` up to AUTO_STEPS_PER_DISPATCH (so that whole chunks fill the steps between fetches)."""
    if config.steps_per_dispatch:
        return config.steps_per_dispatch
    if platform == "cpu":
        return 1
    return max(n for n in range(1, AUTO_STEPS_PER_DISPATCH + 1) if config.log_every_steps % n == 0)


class TrainPrograms:
    """The jitted train programs the loop dispatches: one step per call, and `steps_per_dispatch` steps per call
    wherever that many fit before the loop must stop (see `dispatch_size`). `make(num_steps)` builds a program;
    each is built on first use, so a run compiles at most these two."""

    def __init__(self, make: Callable[[int], Callable], steps_per_dispatch: int):
        self.steps_per_dispatch = steps_per_dispatch
        self._make = make
        self._programs = {}

    def __getitem__(self, num_steps: int):
        if num_steps not in (1, self.steps_per_dispatch):
            raise ValueError(f"no train program of {num_steps} steps (1 or {self.steps_per_dispatch})")
        if num_steps not in self._programs:
            self._programs[num_steps] = self._make(num_steps)
        return self._programs[num_steps]


def dispatch_size(step: int, stop: int, steps_per_dispatch: int) -> int:
    """How many steps the host runs in its next call at `step` when it must regain control at `stop` (the next
    metrics fetch or the epoch's end): `steps_per_dispatch` if they fit, else 1."""
    return steps_per_dispatch if stop - step >= steps_per_dispatch else 1


def next_stop(step: int, steps_per_epoch: int, log_every_steps: int) -> int:
    """The first step after `step` at which the loop fetches metrics: every `log_every_steps` and at the end of
    each epoch."""
    epoch_end = (step // steps_per_epoch + 1) * steps_per_epoch
    return min(epoch_end, (step // log_every_steps + 1) * log_every_steps)


def dispatch_plan(step: int, end: int, steps_per_epoch: int, log_every_steps: int, steps_per_dispatch: int,
                  last_step_alone: bool = False):
    """The host's calls of train programs from `step` up to `end`: yields (size, fetch) for each, where `size`
    steps run in one call and `fetch` says whether the metrics are fetched after it (at `next_stop`).
    `last_step_alone`: each epoch's last step is a call of its own (the program of a kept partial batch)."""
    while step < end:
        fetch_at = next_stop(step, steps_per_epoch, log_every_steps)
        limit = fetch_at
        last_step = (step // steps_per_epoch + 1) * steps_per_epoch - 1
        if last_step_alone and step < last_step:
            limit = min(limit, last_step)
        size = dispatch_size(step, limit, steps_per_dispatch)
        step += size
        yield size, step == fetch_at
