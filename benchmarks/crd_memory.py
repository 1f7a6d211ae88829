"""CRD vs KD train step: peak memory from XLA's memory analysis, and step time, in one process.

    python benchmarks/crd_memory.py [--pairs resnet8:resnet8,wideresnet16_2:wideresnet40_2] [--steps 4]
        [--repeats 7] [--ynn] [--examples 50000]

For each student:teacher pair, the engine's train step (`jaxkd.engine.step.make_train_step`) at batch 64 on a
synthetic CIFAR-sized set of N = `--examples` (default 50000, 100 classes), K 16384: compiled (peak = arguments +
outputs + temporaries - outputs aliased to donated arguments, `compiled.memory_analysis()`), warmed up one step,
then timed `--steps` steps per repeat, variants interleaved repeat by repeat; the median ms per step is
reported. `--ynn` compiles with the CPU YNN option of `jaxkd.engine.compile_options`. To compare two versions of the
code, run the script in a `git worktree` of each (alternating runs). Results in benchmarks/crd_memory.md.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/crd_memory.py --layouts \
        [--examples 1281167] [--batch 256]

`--layouts`: instead, CRD's term alone (both embeddings, the loss, its gradients and the banks' update, the state
donated, as the engine's step computes it) on a `data` mesh over all devices, for `crd.bank_layout` "replicated"
and "sharded" at N = `--examples` (1000 classes, 512-d pooled vectors, K 16384, 128-d): compiled from shapes only
(nothing of N's size is allocated); per-device memory from XLA's memory analysis, and the collectives the
compiled program holds, with their shapes.
"""

import argparse
import collections
import json
import re
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import crd_wrn, kd_wrn  # noqa: E402
from jaxkd.data import epoch_permutation  # noqa: E402
from jaxkd.engine.initial_state import create_train_state  # noqa: E402
from jaxkd.engine.mesh import batch_sharded, data_mesh, replicated  # noqa: E402
from jaxkd.engine.step import make_train_step  # noqa: E402
from jaxkd.methods import Batch, Probe, get_method  # noqa: E402
from jaxkd.methods.crd import CRD  # noqa: E402
from jaxkd.models import ModelOutput  # noqa: E402
from jaxkd.tools.bench import bench_setup, synthetic_split, zero_sums  # noqa: E402

MIB = 2**20
K, BATCH = 16384, 64


def compiled_variant(train, get_config, student, teacher, steps, options):
    """(memory stats in MiB, a function running `steps` steps)."""
    config = get_config()
    config.model, config.teacher.arch, config.batch_size = student, teacher, BATCH
    if "crd" in config:
        config.crd.nce_k = K
    setup = bench_setup(config, train, jax.devices()[:1])
    on_all = replicated(setup.mesh)
    state = jax.device_put(create_train_state(setup), on_all)
    teacher_variables = jax.device_put(setup.teacher.variables, on_all)
    data = jax.device_put((train.images, train.labels, train.index), on_all)
    permutation = jax.device_put(epoch_permutation(jax.random.PRNGKey(0), 0, len(train)), on_all)
    sums = zero_sums(setup)
    compiled = make_train_step(setup).lower(state, sums, teacher_variables, *data, permutation).compile(
        compiler_options=options)
    stats = compiled.memory_analysis()
    memory = {"peak_mib": (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
                           - stats.alias_size_in_bytes) / MIB,
              "temp_mib": stats.temp_size_in_bytes / MIB, "argument_mib": stats.argument_size_in_bytes / MIB}
    carry = [state, sums]

    def run():
        for _ in range(steps):
            carry[0], carry[1] = compiled(carry[0], carry[1], teacher_variables, *data, permutation)
        jax.block_until_ready(carry)

    return memory, run


def term_program(layout: str, num_examples: int, batch: int, feature_dim: int = 512, classes: int = 1000):
    """(per-device memory in MiB, collectives {name: shapes}) of CRD's term on the mesh of all devices."""
    mesh = data_mesh()
    method = get_method("crd", ConfigDict({"crd": dict(CRD.defaults, nce_k=K, bank_layout=layout)}))
    labels = np.arange(num_examples, dtype=np.int32) % classes
    features = ModelOutput([], jnp.zeros((batch, feature_dim), jnp.float32), None)
    init = jax.eval_shape(lambda rng: method.init(rng, Probe(features, features, None, labels, classes)),
                          jax.random.PRNGKey(0))  # shapes only; sets method.num_examples

    def placed(tree, sharding):
        """`tree`'s shapes on the devices as `sharding` (a pytree prefix of `tree`) lays them out."""
        return jax.tree.map(lambda where, subtree: jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=where), subtree), sharding, tree)

    whole, rows = replicated(mesh), batch_sharded(mesh)
    state = placed(init.state, method.state_sharding(mesh, init.state))
    params = placed(init.variables["params"], whole)
    pooled = jax.ShapeDtypeStruct((batch, feature_dim), jnp.float32, sharding=rows)
    ints = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=rows)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=whole)

    def step(params, state, student, teacher, labels, index, key):
        def term(params):
            out = method.term({"params": params}, state, ModelOutput([], student, None),
                              ModelOutput([], teacher, None), Batch(None, labels, index, key), train=True)
            return out.term, out.state

        (loss, state), grads = jax.value_and_grad(term, has_aux=True)(params)
        return loss, grads, jax.lax.with_sharding_constraint(state, method.state_sharding(mesh, state))

    compiled = jax.jit(step, donate_argnums=(1,)).lower(params, state, pooled, pooled, ints, ints, key).compile()
    stats = compiled.memory_analysis()
    memory = {"peak_mib": (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
                           - stats.alias_size_in_bytes) / MIB,
              "argument_mib": stats.argument_size_in_bytes / MIB, "temp_mib": stats.temp_size_in_bytes / MIB,
              "bank_rows_per_device": state["bank_student"].sharding.shard_shape(state["bank_student"].shape)[0]}
    collectives = collections.defaultdict(set)
    for shape, name in re.findall(r"= ([^=]*?) (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)"
                                  r"(?:-start)?\(", compiled.as_text()):
        collectives[shape].add(name)
    return memory, {name: sorted(shapes) for name, shapes in collectives.items()}


def layouts_main(args):
    for layout in ("replicated", "sharded"):
        start = time.perf_counter()
        memory, collectives = term_program(layout, args.examples, args.batch)
        print(json.dumps({"layout": layout, "devices": jax.device_count(), "examples": args.examples,
                          "batch": args.batch, "k": K, **{key: round(value, 1) for key, value in memory.items()},
                          "collectives": collectives, "compile_s": round(time.perf_counter() - start, 1)}),
              flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", default="resnet8:resnet8,wideresnet16_2:wideresnet40_2")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--ynn", action="store_true")
    parser.add_argument("--examples", type=int, default=50000)
    parser.add_argument("--layouts", action="store_true")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    if args.layouts:
        return layouts_main(args)
    options = None
    if args.ynn:
        from jaxkd.engine.compile_options import CPU_YNN_OPTIONS
        options = dict(CPU_YNN_OPTIONS)
    train = synthetic_split(args.examples)
    for pair in args.pairs.split(","):
        student, teacher = pair.split(":")
        built = {}
        for name, get_config in {"kd": kd_wrn.get_config, "crd": crd_wrn.get_config}.items():
            memory, run = compiled_variant(train, get_config, student, teacher, args.steps, options)
            run()  # warm-up; CRD's first step also sets Z
            built[name] = (memory, run, [])
        for _ in range(args.repeats):
            for memory, run, times in built.values():
                start = time.perf_counter()
                run()
                times.append((time.perf_counter() - start) / args.steps * 1000)
        for name, (memory, _, times) in built.items():
            print(json.dumps({"pair": pair, "variant": name, "examples": args.examples, "ynn_option": args.ynn,
                              **{key: round(value, 1) for key, value in memory.items()},
                              "step_ms_median": round(statistics.median(times), 1),
                              "step_ms": [round(t, 1) for t in times]}), flush=True)


if __name__ == "__main__":
    main()
