"""Seeds in one program (a bench-level prototype): N independent runs of one config trained by one jitted step.

At batch 64 the CIFAR models use a few percent of a modern GPU, while a results table needs 3-5 seeds per
cell. Here N runs, each with its own seed (`config.seed + i`: its own initialization, data order, augmentation,
BN statistics, method state and metric sums), are stacked along a leading axis and stepped together by
`jax.vmap` of the engine's own train program (`jaxkd.engine.step.make_train_step`), with one teacher shared by all.
Each run computes what it would compute alone (up to float rounding: vmapped convolutions with per-run weights
become grouped convolutions, whose kernels sum in another order); tests/test_multi_run.py checks that.

Not wired into `jaxkd.train` yet (workdirs, checkpoints and metric logs per run): benchmarks/README.md says
what that would take. `python -m jaxkd.bench --num_runs 1,2,4,8` measures the aggregate images/s.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from jaxkd.data import epoch_permutation
from jaxkd.engine.compile_options import compiler_options
from jaxkd.engine.dispatch import dispatch_plan, steps_per_dispatch
from jaxkd.engine.initial_state import create_train_state
from jaxkd.engine.mesh import replicated
from jaxkd.engine.setup import Setup
from jaxkd.engine.step import make_train_step, zero_sums
from jaxkd.tools.bench_timing import Part, lowered_flops

# the train program's arguments: state, sums, teacher variables, images, labels, index, permutation;
# per run (0) or shared (None)
RUN_AXES = (0, 0, None, None, None, None, 0)


def run_seeds(config, num_runs: int) -> list[int]:
    """The seeds of the N runs: the config's, then the next ones (as N separate runs with --config.seed)."""
    return [config.seed + i for i in range(num_runs)]


def run_config(config, seed: int):
    """`config` with `seed`: what one of the runs would be trained with alone."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.seed = seed
    return config


def stack(trees: list):
    """The runs' pytrees stacked along a new leading axis (the runs' axis)."""
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]), *trees)


def stacked_train_states(setup: Setup, config, num_runs: int):
    """The initial train states of the N runs (each as `create_train_state` makes it for its seed), stacked."""
    return stack([create_train_state(dataclasses.replace(setup, config=run_config(config, seed)))
                  for seed in run_seeds(config, num_runs)])


def stacked_zero_sums(setup: Setup, num_runs: int):
    return stack([zero_sums(setup)] * num_runs)


def epoch_permutations(config, num_runs: int, epoch: int, num_examples: int) -> jax.Array:
    """Each run's data order for `epoch`, as `jaxkd.train` draws it from the run's seed, stacked."""
    return jax.numpy.stack([epoch_permutation(jax.random.PRNGKey(seed), epoch, num_examples)
                            for seed in run_seeds(config, num_runs)])


def make_multi_train_step(setup: Setup, config, num_steps: int = 1):
    """steps(states, sums, teacher_variables, images, labels, index, permutations) -> (states, sums), jitted:
    the engine's `num_steps`-step train program (`make_train_step`) mapped over the runs' axis of the stacked
    states, sums and permutations; the teacher and the training set are shared. States and sums are donated."""
    # the engine's program unjitted (its jit's own compiler options may not be nested in this jit)
    one_run = make_train_step(dataclasses.replace(setup, config=config), num_steps).__wrapped__
    return jax.jit(jax.vmap(one_run, in_axes=RUN_AXES), donate_argnums=(0, 1),
                   compiler_options=compiler_options(setup.mesh, models=setup.models))


def multi_run_part(setup: Setup, config, num_runs: int, steps: int, warmup_steps: int, initial_states=None) -> Part:
    """The bench's part for N runs in one program: `steps` steps of all N runs per repeat (images counted over
    the runs: the aggregate throughput), dispatched as the engine dispatches one run (`steps_per_dispatch` steps
    per call where they fit), compiled and warmed up here. `initial_states`: stacked initial states of at least
    N runs (the first N are taken: run i has seed `seed + i` whatever N), so that several N share one init."""
    on_all = replicated(setup.mesh)
    if initial_states is None:
        initial_states = stacked_train_states(setup, config, num_runs)
    states = jax.device_put(jax.tree.map(lambda leaf: leaf[:num_runs], initial_states), on_all)
    sums = jax.device_put(stacked_zero_sums(setup, num_runs), on_all)
    teacher_variables = jax.device_put(setup.teacher.variables, on_all) if setup.teacher else None
    data = jax.device_put((setup.train.images, setup.train.labels, setup.train.index), on_all)
    permutations = jax.device_put(epoch_permutations(config, num_runs, 0, len(setup.train)), on_all)
    chunk = steps_per_dispatch(config, setup.platform)
    compiled, compile_s, flops = {}, {}, None
    for num_steps in sorted({1, chunk}):
        start = time.perf_counter()
        lowered = make_multi_train_step(setup, config, num_steps).lower(states, sums, teacher_variables, *data,
                                                                        permutations)
        compiled[num_steps] = lowered.compile()
        compile_s[num_steps] = time.perf_counter() - start
        if num_steps == 1:
            flops = lowered_flops(lowered)
    carry = {"states": states, "sums": sums}

    def run_plan(num_steps):
        states, sums = carry["states"], carry["sums"]
        for size, _ in dispatch_plan(0, num_steps, num_steps, num_steps, chunk, False):
            states, sums = compiled[size](states, sums, teacher_variables, *data, permutations)
        jax.block_until_ready(states)
        carry["states"], carry["sums"] = states, sums

    start = time.perf_counter()
    for num_steps in (1, chunk):  # every program runs once before timing
        run_plan(max(warmup_steps, num_steps))
    warmup_s = time.perf_counter() - start

    def run_steps():
        start = time.perf_counter()
        run_plan(steps)
        return time.perf_counter() - start

    images = steps * config.batch_size * num_runs
    return Part(f"jaxkd step [{num_runs} runs]", images, run_steps,
                flops / (config.batch_size * num_runs) if flops else None,
                {"num_runs": num_runs, "compile_s": compile_s[1],
                 "compile_s_chunk": compile_s.get(chunk) if chunk > 1 else None, "warmup_s": warmup_s,
                 "steps": steps, "steps_per_dispatch": chunk, "flops_per_step": flops})
