"""The epoch loop that training (`jaxkd.engine.loop`) and the init stage (`jaxkd.engine.init_stage`) share: the
dispatch plan, the metric sums fetched and logged with the throughput, the NaN check, the progress bar or lines,
the epoch's end, the periodic checkpoint, and the stop path (a checkpoint, then exit). Each loop is a subclass
that says only what differs: its programs, what it logs, and what it does when an epoch ends."""

import dataclasses
import functools
import math
import sys
import time
from pathlib import Path
from typing import Callable

import jax

from jaxkd.data import epoch_permutation
from jaxkd.engine import distributed
from jaxkd.engine.dispatch import TrainPrograms, dispatch_plan
from jaxkd.engine.mesh import replicated
from jaxkd.engine.setup import Setup, say
from jaxkd.errors import UserError
from jaxkd.io.metric_log import MetricLog
from jaxkd.io.run_checkpoint import RunCheckpoints
from jaxkd.io.stop_request import StopRequest


@dataclasses.dataclass
class RunContext:
    """What a run's loops share: its workdir, metric log, train checkpoints and stop request, and how it speaks
    to the user."""

    workdir: Path
    log: MetricLog
    checkpoints: RunCheckpoints
    stop: StopRequest
    say: Callable[[str], None] = say


class EpochLoop:
    """Epochs of jitted steps from a step to `epochs * steps_per_epoch`. The programs take (state, sums, *inputs,
    permutation) and return (state, sums); the sums are fetched every `log_every_steps` and at each epoch's end.
    Subclasses fill in the hooks below; `progress` is what is checkpointed beside the state."""

    label = "epoch"  # in the progress bar and lines: "epoch 3/240"
    finishes_epoch_before_stop = True  # a stop during an epoch's last call lets the epoch end first

    def __init__(self, setup: Setup, context: RunContext, checkpoints: RunCheckpoints, epochs: int,
                 programs: TrainPrograms, last_batch_program, inputs: tuple, permutation_key, step: int):
        """`last_batch_program`: each epoch's last, partial batch (one step per call), when the pipeline keeps
        one; `inputs`: the programs' arguments between the sums and the epoch's permutation; `step`: where the
        loop starts (for the throughput of the first fetch)."""
        self.setup, self.config, self.context, self.checkpoints = setup, setup.config, context, checkpoints
        self.epochs, self.total = epochs, epochs * setup.steps_per_epoch
        self.programs, self.last_batch_program, self.inputs = programs, last_batch_program, inputs
        self.permutation_key = permutation_key
        self.permutation_of = jax.jit(functools.partial(epoch_permutation, num_examples=len(setup.train)),
                                      out_shardings=replicated(setup.mesh))
        self.progress = {}
        self.sums = self.new_sums()
        self.fetched_step, self.fetched_time, self.examples = step, time.perf_counter(), 0

    # What each loop says for itself.
    def new_sums(self):
        """Zeroed metric sums on the devices."""
        raise NotImplementedError

    def means(self, values, count: int, step: int) -> dict:
        """The row to log from the fetched `values` summed over `count` steps (the throughput is added after)."""
        raise NotImplementedError

    def write(self, step: int, means: dict) -> None:
        raise NotImplementedError

    def diverged(self, loss: float, step: int) -> str:
        """The error line when the loss is no longer finite."""
        raise NotImplementedError

    def postfix(self, means: dict) -> dict:
        """The progress bar's postfix."""
        raise NotImplementedError

    def progress_text(self, means: dict) -> str:
        """A progress line's metrics, when the output is a file or a pipe."""
        raise NotImplementedError

    def end_epoch(self, state, step: int, means: dict | None) -> None:
        """What the loop does when an epoch ends (training's evaluation), before its checkpoint."""
        raise NotImplementedError

    def checkpoint_due(self, step: int) -> bool:
        raise NotImplementedError

    def checkpoint_name(self, step: int) -> str:
        """What a stop saves, as said to the user: "a checkpoint at step N"."""
        raise NotImplementedError

    # The loop.
    def run(self, state, step: int):
        """Runs the epochs from `step` to the end; returns (state, step). A stop request saves a checkpoint and exits
        (SystemExit), during an epoch or at its end."""
        spe, stop = self.setup.steps_per_epoch, self.context.stop
        while step < self.total:
            epoch = step // spe  # 0-based
            state, step, means = self.run_epoch(state, step, epoch)
            # A stop that arrives during an epoch's last steps lets training's epoch end as usual (its evaluation,
            # then the checkpoint): a checkpoint at an epoch's end must follow that epoch's evaluation, which
            # resuming from it would never run.
            epoch_complete = step == (epoch + 1) * spe
            if stop.requested and not (epoch_complete and self.finishes_epoch_before_stop):
                self.save_and_exit(state, step)
            self.end_epoch(state, step, means)
            if stop.requested and step < self.total:  # (at the last epoch's end the run is done: it finishes)
                self.save_and_exit(state, step)
            if self.checkpoint_due(step):
                self.checkpoints.save(state, self.progress)
        return state, step

    def run_epoch(self, state, step: int, epoch: int):
        """The calls of epoch `epoch` from `step` to its end, or up to a stop request; returns (state, step, the
        last fetch's means)."""
        setup, config, spe = self.setup, self.config, self.setup.steps_per_epoch
        permutation = self.permutation_of(self.permutation_key, epoch)
        bar = None
        show_progress = config.progress_bar and distributed.is_primary()
        # Output to a file or pipe (nohup, a cluster job) gets a progress line at every fetch instead of a bar.
        progress_lines = show_progress and not sys.stdout.isatty()
        if show_progress:
            from tqdm import tqdm
            bar = tqdm(total=spe, initial=step % spe, desc=f"{self.label} {epoch + 1}/{self.epochs}", leave=False,
                       dynamic_ncols=True, file=sys.stdout, disable=None)  # off when not a TTY
        means = None
        for size, fetch in dispatch_plan(step, (epoch + 1) * spe, spe, config.log_every_steps,
                                         self.programs.steps_per_dispatch, last_step_alone=setup.partial_last_batch):
            if self.context.stop.before_dispatch():
                break
            if setup.partial_last_batch and step % spe == spe - 1:  # the epoch's last, partial batch
                program, examples = self.last_batch_program, setup.last_batch_size
            else:
                program, examples = self.programs[size], size * config.batch_size
            state, self.sums = self.call(program, state, permutation)
            step += size
            self.examples += examples
            if bar is not None:
                bar.update(size)
            if fetch:
                means = self.fetch_and_log(step)
                if bar is not None:
                    bar.set_postfix(**self.postfix(means))
                if progress_lines:
                    print(f"{self.label} {epoch + 1}/{self.epochs} step {step - epoch * spe}/{spe}: "
                          f"{self.progress_text(means)}", flush=True)
        if bar is not None:
            bar.close()
        return state, step, means

    def call(self, program, state, permutation):
        """One host call of `program`: (state, sums) after it. (The streaming loop hands it the loader's batch.)"""
        return program(state, self.sums, *self.inputs, permutation)

    def fetch_and_log(self, step: int) -> dict | None:
        """Fetches the sums, checks the loss, logs the means with the throughput since the last fetch, and starts
        new sums; None when no step ran since the last fetch."""
        values = jax.device_get(self.sums)
        count = step - self.fetched_step
        now = time.perf_counter()
        self.sums = self.new_sums()
        if count == 0:
            return None
        means = self.means(values, count, step)
        means["images_per_s"] = self.examples / max(now - self.fetched_time, 1e-9)
        if not math.isfinite(means["loss"]):
            raise UserError(self.diverged(means["loss"], step))
        self.checkpoints.check()  # a background save that failed (a full disk) stops the run here, within seconds
        self.write(step, means)
        self.fetched_step, self.fetched_time, self.examples = step, now, 0
        return means

    def save_and_exit(self, state, step: int) -> None:
        """The stop path: logs the steps since the last fetch (which also refuses to save a diverged state),
        saves the state and exits with the signal's status."""
        if step > self.fetched_step:
            self.fetch_and_log(step)
        self.context.stop.save_and_exit(self.checkpoints, state, self.progress, self.checkpoint_name(step),
                                        self.context.say)
