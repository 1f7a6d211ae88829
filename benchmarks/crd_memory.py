"""CRD vs KD train step: peak memory from XLA's memory analysis, and step time, in one process.

    python benchmarks/crd_memory.py [--pairs resnet8:resnet8,wideresnet16_2:wideresnet40_2] [--steps 4]
        [--repeats 7] [--ynn] [--examples 50000]

For each student:teacher pair, the engine's train step (`jaxkd.engine.step.make_train_step`) at batch 64 on a
synthetic CIFAR-sized set of N = `--examples` (default 50000, 100 classes), K 16384: compiled (peak = arguments +
outputs + temporaries - outputs aliased to donated arguments, `compiled.memory_analysis()`), warmed up one step,
then timed `--steps` steps per repeat, variants interleaved repeat by repeat; the median ms per step is
reported. `--ynn` compiles with the CPU YNN option of `jaxkd.engine.compile_options`. To compare two versions of the
code, run the script in a `git worktree` of each (alternating runs). Results in benchmarks/crd_memory.md.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import crd_wrn, kd_wrn  # noqa: E402
from jaxkd.data import epoch_permutation  # noqa: E402
from jaxkd.engine.initial_state import create_train_state  # noqa: E402
from jaxkd.engine.mesh import replicated  # noqa: E402
from jaxkd.engine.step import make_train_step  # noqa: E402
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", default="resnet8:resnet8,wideresnet16_2:wideresnet40_2")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--ynn", action="store_true")
    parser.add_argument("--examples", type=int, default=50000)
    args = parser.parse_args()
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
