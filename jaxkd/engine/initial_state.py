"""A run's initial train state: the student's init, the method's modules and state from a shape probe."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxkd.engine.mesh import train_state_sharding
from jaxkd.engine.setup import Setup
from jaxkd.engine.train_state import TrainState
from jaxkd.methods import Batch, Probe, apply_module
from jaxkd.methods.base import float32_outputs

# XLA options for the one-off program of `create_train_state` on CPU (fast to compile, slower to run)
INITIAL_STATE_CPU_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def create_train_state(setup: Setup) -> TrainState:
    """Initial state: the seed's init for the student, the method's modules and state from a shape probe.

    Two jitted programs (run op by op, the initializers and the probe's forward passes would compile one small
    program per operation and shape: ~300 for a ResNet and KD, about 10 s on CPU). The first, `_student_init`,
    draws the student's variables from the seed and the data pipeline alone, so that runs of one student under
    other methods or teachers find it in XLA's persistent compilation cache: rd_resnet8's took 1.2-1.8 s of the
    1.5-2.9 s that its state took to compile as one program per method on CPU. The second builds the rest around
    it, bit for bit what one program made. Both run once, so on CPU they are compiled without XLA's backend
    optimizations: 3.6 s instead of 12 s for wrn40_2 at batch 64, and 0.24 s instead of 0.05 s to run. A method
    that lays its state out over the mesh (CRD's sharded banks) gets it made in place, so that no device holds
    all of it."""
    options = INITIAL_STATE_CPU_OPTIONS if jax.default_backend() == "cpu" else None
    shardings = None
    if setup.method.shards_state:
        shardings = train_state_sharding(setup.mesh, train_state_layout(setup), setup.method)
    seed_key, images, labels, index, teacher_variables = _initial_state_inputs(setup)
    sample, student_variables = jax.jit(functools.partial(_student_init, setup),
                                        compiler_options=options)(seed_key, images)
    return jax.jit(functools.partial(_initial_state, setup), compiler_options=options, out_shardings=shardings)(
        seed_key, sample, student_variables, labels, index, teacher_variables)


def train_state_layout(setup: Setup) -> TrainState:
    """The initial state's shapes and dtypes (`jax.ShapeDtypeStruct` leaves): traced, never compiled or run."""
    def initial_state(seed_key, images, labels, index, teacher_variables):
        return _initial_state(setup, seed_key, *_student_init(setup, seed_key, images), labels, index,
                              teacher_variables)
    return jax.eval_shape(initial_state, *_initial_state_inputs(setup))


def _initial_state_inputs(setup: Setup) -> tuple:
    """The initial state's array inputs: the run's seed key, the first `batch_size` examples, the teacher."""
    config = setup.config
    return (jax.random.PRNGKey(config.seed), *setup.first_examples(),
            setup.teacher.variables if setup.teacher else None)


class _InitKeys(NamedTuple):
    student: jax.Array
    method: jax.Array
    probe: jax.Array
    probe_batch: jax.Array
    step: jax.Array


def _init_keys(seed_key) -> _InitKeys:
    """The keys the initial state draws from the run's seed key (both programs derive them alike)."""
    init_rng, step_rng = jax.random.split(seed_key)
    return _InitKeys(*jax.random.split(init_rng, 4), step_rng)


def _student_init(setup: Setup, seed_key, images):
    """(the probe's sample: the first examples augmented, the student's variables)."""
    keys = _init_keys(seed_key)
    sample = setup.pipeline.augment(keys.probe, images)
    return sample, setup.student.init(keys.student, sample, train=False)


def _initial_state(setup: Setup, seed_key, sample, student_variables, labels, index, teacher_variables) -> TrainState:
    """`create_train_state`'s second program: the state around the student's variables, from the run's seed key
    and the probe's sample."""
    keys = _init_keys(seed_key)
    student_out, _ = apply_module(setup.student, student_variables, sample, train=True, method=setup.student.forward)
    student_out = float32_outputs(student_out)
    teacher_out = float32_outputs(apply_module(setup.teacher.model, teacher_variables, sample, train=False,
                                               method=setup.teacher.model.forward)[0] if setup.teacher else None)
    batch = Batch(sample, labels, index, keys.probe_batch)
    if setup.method.strong_view:  # shapes only: the probe's strong view is the sample itself
        batch = batch._replace(strong_images=sample, strong_student=student_out, strong_teacher=teacher_out)
    method_init = setup.method.initialize(keys.method, Probe(
        student_out, teacher_out, batch, setup.train_labels, setup.train.num_classes,
        teacher_model=setup.teacher.model if setup.teacher else None, teacher_variables=teacher_variables))
    params = {"student": student_variables["params"], "method": method_init.variables.get("params", {})}
    batch_stats = {"student": student_variables["batch_stats"],
                   "method": method_init.variables.get("batch_stats", {})}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=setup.optimizer.init(params), method_state=method_init.state, rng=keys.step)
