"""`python -m jaxkd.bench`: the engine's jitted train step against the same step in PyTorch (eager and
torch.compile), and an epoch as training runs it, on synthetic data, for any method and pair; an in-process A/B
of two config variants (`--ab`); with `--input ROOT` the streaming input path against torchvision's DataLoader
instead (`jaxkd.tools.bench_input`). What each part times, how, and what a record holds: benchmarks/README.md."""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.config.command_line import parse_config_command_line
from jaxkd.config.recipes import method_recipe
from jaxkd.data import Split, epoch_permutation
from jaxkd.data.sources import SOURCE_CLASSES, STREAMING_SOURCES
from jaxkd.engine import host_allocator
from jaxkd.engine.compile_options import compiler_options, cpu_ynn_setting
from jaxkd.engine.dispatch import dispatch_plan, steps_per_dispatch
from jaxkd.engine.initial_state import create_train_state
from jaxkd.engine.mesh import replicated
from jaxkd.engine.setup import Setup, Teacher, build
from jaxkd.engine.step import make_train_step, train_programs, zero_sums
from jaxkd.errors import UserError, run_command
from jaxkd.io.safe_write import check_output_directory
from jaxkd.methods import METHODS, get_method
from jaxkd.models import COMPUTE_DTYPES, canonical_name, get_model
from jaxkd.tools.bench_timing import Part, lowered_flops
from jaxkd.tools.bench_torch import TORCH_MODES, forget_compiled_steps, torch_device_for, torch_part, torch_part_name
from jaxkd.tools.multi_run import multi_run_part, stacked_train_states
from jaxkd.tools.published import REPDISTILLER_PAIRS_DIFFERENT, REPDISTILLER_PAIRS_SAME

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 100  # CIFAR-100's classifier size
CIFAR_SIZE = 32  # the synthetic images' side, but on the streaming path (below)
TFDS_IMAGE_CLASSES = {"imagenet2012": 1000}  # the classes of the TFDS image datasets the recipes name
RECORD_VERSION = 5  # what each version added: benchmarks/README.md, "Record versions"
AB_YNN = "ynn"


# ----------------------------------------------------------------------------------------------- configs
def method_config(base, method: str):
    """`base` with `config.method = method`, taking the method's recipe from the recipe table
    (jaxkd/config/recipes.py `method_recipe`): its loss weights, its teacher architecture when `base` has none, and
    the sections `base` lacks (e.g. `fitnet`). The model pair, batch size and optimizer stay `base`'s.
    Returns (config, note)."""
    if method == base.method:
        return base, ""
    config = base.copy_and_resolve_references()
    found = method_recipe(method)
    with config.unlocked():
        config.method = method
        if found is None:
            return config, f"no recipe for {method!r} in jaxkd/config/recipes.py: loss weights of the base config"
        name, recipe = found
        config.loss = recipe.loss.copy_and_resolve_references()
        if not config.teacher.arch and recipe.teacher.arch:
            config.teacher.arch = recipe.teacher.arch
        for key in recipe.keys():
            if key not in config:
                config[key] = recipe[key].copy_and_resolve_references() if hasattr(recipe[key], "keys") \
                    else recipe[key]
    return config, f"loss weights and method sections from {name}"


# ------------------------------------------------------------------------------------------------- setup
@dataclasses.dataclass(frozen=True)
class LargeImages:
    """The bench's training set at a size other than CIFAR's (`jaxkd.data.Split` holds 32x32 images only), e.g.
    ImageNet's 224x224: the same fields, read only by the train step, which takes any size."""

    images: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)


def synthetic_split(num_examples: int, num_classes: int = NUM_CLASSES, seed: int = 0,
                    image_size: int = CIFAR_SIZE) -> Split | LargeImages:
    """Random uint8 images (CIFAR's 32x32 by default) with random labels: the bench's training set (no download)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_examples, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, num_examples, dtype=np.int32)
    split = Split if image_size == CIFAR_SIZE else LargeImages
    return split(images, labels, np.arange(num_examples, dtype=np.int32), num_classes)


def random_teacher(config, num_classes: int) -> Teacher | None:
    """A teacher of `config.teacher.arch` with random weights, for a method that needs one when the config names
    no checkpoint (else None: `jaxkd.engine.setup.build` loads the configured one)."""
    if not get_method(config.method, config).uses_teacher or config.teacher.checkpoint:
        return None
    if not config.teacher.arch:
        raise UserError(f"method {config.method!r} needs a teacher: set --config.teacher.arch (random weights) "
                        f"or --config.teacher.checkpoint")
    arch = canonical_name(config.teacher.arch)
    model = get_model(arch, num_classes, dtype=COMPUTE_DTYPES[config.dtype])
    variables = model.init(jax.random.PRNGKey(config.seed + 1), jnp.zeros((1, 32, 32, 3)), train=False)
    return Teacher(model, variables, arch)


def bench_classes(config) -> int:
    """The number of classes of the bench's synthetic data: that of `config.data.source` (so that a configured
    teacher, e.g. the demo's digits teacher, fits) or of its TFDS images (ImageNet's 1000 for
    configs/imagenet.py), 100 for an unknown source (build names that mistake)."""
    if config.data.source in STREAMING_SOURCES:
        return TFDS_IMAGE_CLASSES.get(config.data.tfds_name, NUM_CLASSES)
    return SOURCE_CLASSES.get(config.data.source, NUM_CLASSES)


def bench_image_size(config) -> int:
    """The side of the bench's synthetic images: the streaming path's training crop (`data.image_size`, ImageNet's
    224) for its sources, CIFAR's 32 otherwise."""
    return config.data.image_size if config.data.source in STREAMING_SOURCES else CIFAR_SIZE


def bench_setup(config, train: Split, devices) -> Setup:
    """`jaxkd.engine.setup.build` on the bench's training split (also its test split), with a random teacher when no
    checkpoint is configured."""
    return build(config, devices, data=(train, train), teacher=random_teacher(config, train.num_classes))


# ------------------------------------------------------------------------------------------------ timing
def jax_parts(setup: Setup, config, steps: int, warmup_steps: int, cpu_ynn: bool | None = None,
              name: str = "jaxkd step") -> tuple[Part, Part]:
    """(a) the train step and (c) the epoch, sharing the engine's compiled train programs (one step per call,
    and `config.steps_per_dispatch` steps per call where they fit, as `jaxkd.train` dispatches them), compiled
    and warmed up here; they are built with `JAXKD_CPU_YNN` saying `cpu_ynn` (None: as the environment says)."""
    on_all = replicated(setup.mesh)
    state = jax.device_put(create_train_state(setup), on_all)
    teacher_variables = jax.device_put(setup.teacher.variables, on_all) if setup.teacher else None
    data = jax.device_put((setup.train.images, setup.train.labels, setup.train.index), on_all)
    with cpu_ynn_setting(cpu_ynn):
        programs = train_programs(setup)
        options = compiler_options(setup.mesh, models=setup.models)  # what the engine's jit was given
    chunk = programs.steps_per_dispatch
    permutation_of = jax.jit(lambda key, epoch: epoch_permutation(key, epoch, len(setup.train)),
                             out_shardings=on_all)
    base_key = jax.random.PRNGKey(config.seed)
    permutation = permutation_of(base_key, 0)
    carry = {"state": state, "sums": zero_sums(setup)}

    # from here on the compiled executables run: no call below can compile
    compiled, compile_s, step_flops = {}, {}, None
    for num_steps in sorted({1, chunk}):
        start = time.perf_counter()
        lowered = programs[num_steps].lower(carry["state"], carry["sums"], teacher_variables, *data, permutation)
        compiled[num_steps] = lowered.compile()
        compile_s[num_steps] = time.perf_counter() - start
        if num_steps == 1:
            step_flops = lowered_flops(lowered)
    if setup.partial_last_batch:  # the epoch's last step, on the partial batch the pipeline keeps
        with cpu_ynn_setting(cpu_ynn):
            last_program = make_train_step(setup, batch_size=setup.last_batch_size)
        compiled["last"] = last_program.lower(carry["state"], carry["sums"], teacher_variables, *data,
                                              permutation).compile()
    # XLA counts one device's program: times the devices, for the whole step (the replicated optimizer
    # update is then counted once per device, as it is computed)
    flops = step_flops * setup.mesh.devices.size if step_flops else 0.0

    def run_plan(num_steps, steps_per_epoch, log_every_steps, permutation_, as_epoch=False):
        """Runs `num_steps` steps on the state in `carry` by the engine's `dispatch_plan` (steps counted from 0
        here), fetching the metric sums where it says; `as_epoch`: the epoch's last step is the partial batch's
        program when the pipeline keeps one, as in `jaxkd.train`."""
        state, sums = carry["state"], carry["sums"]
        last_alone, position = as_epoch and setup.partial_last_batch, 0
        for size, fetch in dispatch_plan(0, num_steps, steps_per_epoch, log_every_steps, chunk, last_alone):
            program = compiled["last" if last_alone and position == steps_per_epoch - 1 else size]
            state, sums = program(state, sums, teacher_variables, *data, permutation_)
            position += size
            if fetch:
                jax.device_get(sums)
                sums = zero_sums(setup)
        jax.block_until_ready(state)
        carry["state"], carry["sums"] = state, sums

    start = time.perf_counter()
    for num_steps in (1, chunk):  # every program runs once before timing
        warm = max(warmup_steps, num_steps)
        run_plan(warm, warm, warm, permutation)
    if setup.partial_last_batch:
        run_plan(2, 2, 2, permutation, as_epoch=True)  # a 2-step "epoch": its second step is the partial batch's
    first_steps_s = time.perf_counter() - start

    def run_steps():
        start = time.perf_counter()
        run_plan(steps, steps, steps, permutation)
        return time.perf_counter() - start

    spe, log_every = setup.steps_per_epoch, config.log_every_steps
    permutation_of(base_key, 1).block_until_ready()  # compiled before timing

    def run_epoch():
        """An epoch as jaxkd.train's loop runs it; the state's step need not be at an epoch boundary (the
        step reads its batch position from the state), which changes nothing in the work done."""
        start = time.perf_counter()
        run_plan(spe, spe, log_every, permutation_of(base_key, 1), as_epoch=True)
        return time.perf_counter() - start

    batch = config.batch_size
    step_part = Part(name, steps * batch, run_steps, flops / batch if flops else None,
                     {"compile_s": compile_s[1], "compile_s_chunk": compile_s.get(chunk) if chunk > 1 else None,
                      "warmup_s": first_steps_s, "steps": steps, "steps_per_dispatch": chunk,
                      "flops_per_step": flops,
                      "compiler_options": options, "cpu_ynn": options is not None})
    epoch_images = (spe - 1) * batch + setup.last_batch_size if setup.partial_last_batch else spe * batch
    epoch_part = Part("jaxkd epoch", epoch_images, run_epoch, flops / batch if flops else None,
                      {"steps": spe, "log_every_steps": log_every, "steps_per_dispatch": chunk,
                       "last_batch_size": setup.last_batch_size or batch})
    return step_part, epoch_part


# ---------------------------------------------------------------------------------------------- environment
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(devices) -> dict:
    device = devices[0]
    return {"platform": device.platform, "device_kind": device.device_kind, "num_devices": len(devices),
            "cpu_model": cpu_model(), "host_cpus": os.cpu_count(),
            "host_cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}


def device_slug(info: dict) -> str:
    name = f"cpu-{info['cpu_model']}" if info["platform"] == "cpu" else info["device_kind"]
    name = re.sub(r"\s*@.*", "", re.sub(r"\(r\)|\(tm\)", "", name.lower()))  # no trademarks, no clock
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")[:48]


def thread_settings() -> dict:
    """Threads, XLA flags and allocator settings in effect (the CPU affinity is in `device_info`)."""
    settings = {name: os.environ.get(name) for name in
                ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GLIBC_TUNABLES",
                 "MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")}
    settings = {name: value for name, value in settings.items() if value is not None}
    settings["host_allocator_keeps_freed_memory"] = host_allocator.applied
    try:
        import torch

        settings["torch_num_threads"] = torch.get_num_threads()
        settings["torch_num_interop_threads"] = torch.get_num_interop_threads()
    except ImportError:
        pass
    return settings


def versions() -> dict:
    out = {"python": platform.python_version(), "jax": jax.__version__}
    for module in ("jaxlib", "flax", "optax", "torch"):
        try:
            out[module] = importlib.import_module(module).__version__
        except ImportError:
            pass
    return out


def git_commit(repo: Path = REPO) -> str | None:
    """The checkout's commit (short hash), with "-dirty" when tracked files differ from it: the record then
    says that the code it timed is not exactly that commit. None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = commit and git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) or None


def write_record(record: dict, out_dir, pair_in_name: bool = False) -> Path:
    """Writes `record` as `<date>-<device>-<method>[-<teacher>-<student>][-ab-<key>][-k].json` in `out_dir`
    (the pair with `pair_in_name`), never replacing a file: the JSON goes to a temporary name and is
    hard-linked to the first free name (atomic, fails if the name exists)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{record['date']}-{device_slug(record['device'])}-{record['method']}"
    if pair_in_name:
        stem += "-" + re.sub(r"[^a-z0-9]+", "-", f"{record['teacher'] or 'none'}-{record['student']}".lower())
    if record.get("ab"):
        stem += "-ab-" + re.sub(r"[^a-z0-9]+", "-", record["ab"].lower()).strip("-")
    temporary = out_dir / f".{stem}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    try:
        for k in range(1, 10000):
            path = out_dir / (f"{stem}.json" if k == 1 else f"{stem}-{k}.json")
            try:
                os.link(temporary, path)
                return path
            except FileExistsError:
                continue
        raise UserError(f"{out_dir}: too many records named {stem}")
    finally:
        temporary.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------- run
def _config_path(config, key: str):
    """(the ConfigDict holding dotted `key`, its last name), or a UserError naming the key."""
    *sections, name = key.split(".")
    holder = config
    for section in sections:
        if section not in holder or not hasattr(holder[section], "keys"):
            raise UserError(f"--ab={key}: the config has no section {section!r}")
        holder = holder[section]
    if name not in holder:
        raise UserError(f"--ab={key}: the config has no key {key!r}")
    return holder, name


def _parse_like(text: str, current, key: str):
    """`text` as a value of the type of `current` (the config's value of `key`)."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        return type(current)(text)
    except (TypeError, ValueError):
        raise UserError(f"--ab={key}=...: {text!r} is not a valid {type(current).__name__}, the type of "
                        f"{key}") from None


def ab_variants(config, ab: str, platform_name: str) -> list[tuple[str, object, bool | None]]:
    """[(part name, config, cpu_ynn)] of the jaxkd steps to time (cpu_ynn None: the engine's setting): the
    config when `ab` is empty; else variant A and variant B (see the module docstring)."""
    if not ab:
        return [("jaxkd step", config, None)]
    if ab == AB_YNN:
        if platform_name != "cpu":
            raise UserError(f"--ab={AB_YNN} compares an XLA:CPU option; the devices here are {platform_name}")
        return [(f"jaxkd step [{AB_YNN}=off]", config, False), (f"jaxkd step [{AB_YNN}=on]", config, True)]
    key, _, values_text = ab.partition("=")
    holder, name = _config_path(config, key)
    current = holder[name]
    if values_text:
        texts = values_text.split(",")
        if len(texts) != 2:
            raise UserError(f"--ab={ab}: give two values, --ab={key}=A,B")
        values = [_parse_like(text, current, key) for text in texts]
    elif isinstance(current, bool):
        values = [False, True]
    else:
        raise UserError(f"--ab={ab}: {key} is {current!r}; --ab takes '{AB_YNN}', a boolean config key, or "
                        f"KEY=A,B")
    variants = []
    for value in values:
        variant = config.copy_and_resolve_references()
        holder, name = _config_path(variant, key)
        with variant.unlocked():
            holder[name] = value
        variants.append((f"jaxkd step [{key}={value}]", variant, None))
    return variants


def _same_or_none(values: list):
    return values[0] if all(v == values[0] for v in values) else None


def ratio_key(mode: str) -> str:
    """The record's key of jaxkd's speed over PyTorch's in `mode` (`ratio_jaxkd_over_torch` for eager mode)."""
    return "ratio_jaxkd_over_torch" + ("" if mode == "eager" else "_compile_" + mode.replace("-", "_"))


def torch_parts(config, setup: Setup, steps: int, warmup_steps: int, device: str, modes, compile_backend: str,
                notes: list[str]) -> list[Part]:
    """(b) in each of `modes`; a mode whose torch.compile fails is left out with a note naming the error (on a
    machine lent for minutes the other parts' numbers must survive a compiler problem)."""
    parts = []
    if any(mode != "eager" for mode in modes):
        forget_compiled_steps()
    for mode in modes:
        try:
            parts.append(torch_part(config, setup, steps, warmup_steps, device, config.dtype, mode,
                                    compile_backend))
        except Exception as error:  # torch.compile's errors have no common type (dynamo, inductor, triton)
            if mode == "eager":
                raise
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            notes.append(f"PyTorch {torch_part_name(mode)} failed, left out: {type(error).__name__}: {first_line}")
    return parts


def bench_method(config, *, steps: int, repeats: int, warmup_steps: int, epoch_images: int,
                 devices, torch_modes=("eager",), compile_backend: str = "inductor", notes: list[str],
                 ab: str = "", num_runs=()) -> dict:
    """Times (a), (b) in each of `torch_modes` (none when empty) and (c) for one method config, or with `ab`
    the two variants of (a) and (b); with `num_runs` also N runs in one program for each N
    (`jaxkd.tools.multi_run`); returns the JSON record."""
    batch = config.batch_size
    train = synthetic_split(max(epoch_images, batch), bench_classes(config), seed=config.seed,
                            image_size=bench_image_size(config))
    if config.data.source in STREAMING_SOURCES:
        notes.append(f"data.source {config.data.source}: the synthetic images held on the device, the step the "
                     f"device-resident path's (its padded crop and flip of the {train.images.shape[1]} px images on "
                     f"the device); a streaming run's step takes the loader's crop instead, the networks' work the "
                     f"same; the loader is not timed")
    info = device_info(devices)
    load_before = os.getloadavg()
    step_parts, setup, epoch_part = [], None, None
    variants = ab_variants(config, ab, info["platform"])
    for _, variant, _ in variants:
        chunk = steps_per_dispatch(variant, info["platform"])
        if chunk > steps:
            raise UserError(f"--steps {steps} is less than steps_per_dispatch {chunk}: the timed steps would "
                            f"never run the {chunk}-step program")
    for name, variant, cpu_ynn in variants:
        variant_setup = bench_setup(variant, train, devices)
        step_part, epoch_part = jax_parts(variant_setup, variant, steps, warmup_steps, cpu_ynn, name)
        step_parts.append(step_part)
        setup = setup or variant_setup
    others = []
    if torch_modes:
        torch_device = torch_device_for(info["platform"])
        if torch_device is None:
            notes.append(f"PyTorch step skipped: this PyTorch cannot run on {info['platform']}")
        else:
            others += torch_parts(config, setup, steps, warmup_steps, torch_device, torch_modes, compile_backend,
                                  notes)
            if config.method not in ("none", "kd"):
                notes.append(f"the PyTorch step is the seed's CE + KD step (with the teacher forward where there "
                             f"is a teacher), without the {config.method} term and modules: the ratio flatters "
                             f"PyTorch")
    if ab:
        notes.append(f"A/B of {ab}: the two jaxkd steps interleaved, alternating which runs first; no epoch part")
    else:
        others.append(epoch_part)
    initial_states = stacked_train_states(setup, config, max(num_runs)) if num_runs else None
    run_parts = [multi_run_part(setup, config, n, steps, warmup_steps, initial_states) for n in num_runs]
    others += run_parts
    for repeat in range(repeats):  # interleaved, so that load from other processes hits every part alike
        for part in (step_parts if repeat % 2 == 0 else step_parts[::-1]) + others:
            part.seconds.append(part.run())
    load_after = os.getloadavg()

    parts = step_parts + others
    results = {part.name: part.summary() for part in parts}
    for mode in torch_modes:
        name = torch_part_name(mode)
        if name not in results:  # skipped (no PyTorch for the device) or failed to compile (noted)
            continue
        torch_seconds = results[name]["seconds"]
        for step_part in step_parts:
            # per-repeat ratios of neighbouring measurements, then their median: robust to slow drifts in load
            ratios = [t / j for j, t in zip(step_part.seconds, torch_seconds)]
            where = results if not ab else results[step_part.name]
            where[ratio_key(mode)] = statistics.median(ratios)
            where[ratio_key(mode) + "_per_repeat"] = ratios
        if step_parts[0].flops_per_image:
            results[name]["flops_per_s_same_count"] = (step_parts[0].flops_per_image * batch /
                                                       (statistics.median(torch_seconds) / steps))
    for part in run_parts:  # aggregate images/s of N runs in one program over one run's (the engine's step)
        speed = [(part.images / sn) / (step_parts[0].images / s1) for s1, sn in zip(step_parts[0].seconds,
                                                                                   part.seconds)]
        results.setdefault("multi_run", {})[str(part.info["num_runs"])] = {
            "aggregate_speedup_over_one_run": statistics.median(speed),
            "aggregate_speedup_per_repeat": speed}
    if ab:
        a, b = step_parts
        speed = [sa / sb for sa, sb in zip(a.seconds, b.seconds)]
        results["ab"] = {"key": ab, "a": a.name, "b": b.name, "speed_ratio_b_over_a": statistics.median(speed),
                         "speed_ratio_b_over_a_per_repeat": speed,
                         "time_change_b_over_a_percent": 100 * (statistics.median([1 / r for r in speed]) - 1)}
    teacher = setup.teacher.arch if setup.teacher else None
    return {
        "version": RECORD_VERSION,
        "date": datetime.date.today().isoformat(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": config.method, "student": canonical_name(config.model), "teacher": teacher,
        "teacher_weights": "checkpoint" if config.teacher.checkpoint else ("random" if teacher else None),
        "batch_size": batch, "compute_dtype": _same_or_none([variant.dtype for _, variant, _ in variants]),
        "steps": steps, "repeats": repeats,
        "warmup_steps": warmup_steps, "epoch_images": len(train),
        "saliencymix": bool(config.data.saliencymix), "ab": ab or None,
        "steps_per_dispatch": _same_or_none([p.info["steps_per_dispatch"] for p in step_parts]),
        "compiler_options": _same_or_none([p.info["compiler_options"] for p in step_parts]),
        "cpu_ynn": _same_or_none([p.info["cpu_ynn"] for p in step_parts]),
        "num_runs": list(num_runs), "torch_modes": list(torch_modes),
        "torch_compile_backend": compile_backend if torch_modes else None,
        "loss": {"gamma": config.loss.gamma, "alpha": config.loss.alpha, "beta": config.loss.beta,
                 "kd_temperature": config.loss.kd_temperature},
        "data": f"synthetic uint8 {train.images.shape[1]}x{train.images.shape[2]}, {train.num_classes} classes",
        "flops_count": "XLA HloCostAnalysis 'flops' of the lowered jaxkd train step, before the backend's "
                       "rewrites (multiply-add = 2), times the number of devices",
        "results": results,
        "device": info, "threads": thread_settings(), "versions": versions(), "git_commit": git_commit(),
        "load_average_before": load_before, "load_average_after": load_after,
        "notes": notes,
    }


def format_table(record: dict) -> str:
    results = record["results"]
    teacher = f"{record['teacher']} -> " if record["teacher"] else ""
    ynn = {True: ", YNN on", False: ", YNN off"}.get(record.get("cpu_ynn"), "")
    parts = [name for name, value in results.items() if isinstance(value, dict) and "images_per_s" in value]
    width = max(12, *map(len, parts))
    lines = [f"{record['method']}: {teacher}{record['student']}, batch {record['batch_size']}, "
             f"{record['compute_dtype']}{ynn}, {record['device']['device_kind']} ({record['device']['cpu_model']}), "
             f"median of {record['repeats']} on {record['data']} (speed, not accuracy)",
             f"  {'part':<{width}} {'images/s':>10} {'(min-max)':>17} {'ms/step':>9} {'GFLOP/s':>9}"]
    for name in parts:
        part = results[name]
        ms = 1000 * part["images_per_repeat"] / part["steps"] / part["images_per_s"]  # a step of all its runs
        gflops = part.get("flops_per_s", part.get("flops_per_s_same_count"))
        ratio = f"  jaxkd / torch {part['ratio_jaxkd_over_torch']:.3f}" if "ratio_jaxkd_over_torch" in part else ""
        lines.append(f"  {name:<{width}} {part['images_per_s']:>10.1f} "
                     f"{part['images_per_s_min']:>8.1f}-{part['images_per_s_max']:<8.1f} {ms:>9.1f} "
                     f"{gflops / 1e9 if gflops else float('nan'):>9.1f}{ratio}")
    for mode in TORCH_MODES:
        if ratio_key(mode) in results:
            what = "torch" if mode == "eager" else f"torch compile {mode}"
            lines.append(f"  jaxkd / {what} (images/s): {results[ratio_key(mode)]:.3f}")
    for n, multi in results.get("multi_run", {}).items():
        lines.append(f"  {n} runs in one program: {multi['aggregate_speedup_over_one_run']:.3f}x one run's images/s")
    if "ab" in results:
        ab = results["ab"]
        lines.append(f"  A/B {ab['key']}: B/A speed {ab['speed_ratio_b_over_a']:.3f} (median of per-repeat ratios), "
                     f"step time {ab['time_change_b_over_a_percent']:+.1f}%")
    for note in record["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def bench_pairs(config, pairs: str) -> list[tuple[str, str]]:
    """[(teacher, student)] to benchmark: the config's pair for "", RepDistiller's 13 benchmark pairs for
    "repdistiller" (`jaxkd.tools.published`, both of its tables in order), else "TEACHER:STUDENT,..."."""
    if not pairs:
        return [(config.teacher.arch, config.model)]
    if pairs == "repdistiller":
        return list(REPDISTILLER_PAIRS_SAME) + list(REPDISTILLER_PAIRS_DIFFERENT)
    out = []
    for text in pairs.split(","):
        teacher, colon, student = text.strip().partition(":")
        if not colon or not teacher or not student:
            raise UserError(f"--pairs {pairs}: write each pair as TEACHER:STUDENT (e.g. wrn40_2:wrn16_2), or "
                            f"'repdistiller' for RepDistiller's 13")
        out.append((canonical_name(teacher), canonical_name(student)))
    return out


def run(config, *, methods: str = "", steps: int = 20, repeats: int = 5, warmup_steps: int = 2,
        epoch_images: int = 0, dtype_name: str = "", num_devices: int = 1, with_torch: bool = True,
        torch_modes: str = "eager", compile_backend: str = "inductor", torch_threads: int = 0, pairs: str = "",
        out: str | None = "", note: str = "", ab: str = "", num_runs: str = "") -> list[dict]:
    """Benchmarks every method of `methods` ("" = the config's, "all" = every registered one, or a comma
    list) on every pair of `pairs` (see `bench_pairs`); returns the records (and writes them to `out` unless it
    is empty; each record as soon as it is measured). `torch_modes`: a comma list of `TORCH_MODES` for the
    PyTorch part (`with_torch=False`: none). `ab`: see the module docstring. `num_runs`: a comma list of N, each
    timed as N runs in one program (`jaxkd.tools.multi_run`)."""
    if steps < 1 or repeats < 1:
        raise UserError(f"--steps and --repeats must be positive (got {steps}, {repeats})")
    try:
        run_counts = tuple(int(n) for n in num_runs.split(",") if n.strip())
    except ValueError:
        run_counts = (0,)
    if any(n < 1 for n in run_counts):
        raise UserError(f"--num_runs {num_runs}: a comma list of positive numbers of runs, e.g. 1,2,4,8")
    if run_counts and ab:
        raise UserError("--num_runs and --ab: one at a time")
    modes = tuple(m.strip() for m in torch_modes.split(",") if m.strip()) if with_torch else ()
    if with_torch and (not modes or any(m not in TORCH_MODES for m in modes)):
        raise UserError(f"--torch_modes {torch_modes}: a comma list of {', '.join(TORCH_MODES)}")
    pair_list = bench_pairs(config, pairs)
    if out:
        check_output_directory(out, "--out")
    if dtype_name:  # the models' compute dtype for every method (else the config's `dtype`)
        if dtype_name not in COMPUTE_DTYPES:
            raise UserError(f"unknown --dtype {dtype_name!r}; choose one of {', '.join(COMPUTE_DTYPES)}")
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.dtype = dtype_name
    names = ([config.method] if not methods else list(METHODS) if methods == "all"
             else [m.strip() for m in methods.split(",") if m.strip()])
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r}; known methods: {', '.join(METHODS)}")
    devices = jax.devices() if num_devices == 0 else jax.devices()[:num_devices]
    if num_devices > len(jax.devices()):
        raise UserError(f"--num_devices {num_devices}: only {len(jax.devices())} devices")
    epoch_images = epoch_images or 20 * config.batch_size
    if with_torch and torch_threads:
        import torch

        previous_threads = torch.get_num_threads()
        torch.set_num_threads(torch_threads)
    try:
        records = []
        for teacher, student in pair_list:
            pair_config = config
            if pairs:
                pair_config = config.copy_and_resolve_references()
                with pair_config.unlocked():
                    pair_config.model, pair_config.teacher.arch = student, teacher
            for method in names:
                records += _run_method(pair_config, method, steps=steps, repeats=repeats,
                                       warmup_steps=warmup_steps, epoch_images=epoch_images, devices=devices,
                                       torch_modes=modes, compile_backend=compile_backend, out=out, note=note,
                                       ab=ab, num_runs=run_counts, pair_in_name=bool(pairs))
        return records
    finally:
        if with_torch and torch_threads:
            torch.set_num_threads(previous_threads)  # the setting is process-wide (matters inside test runs)


def _run_method(config, method: str, *, out, note: str, pair_in_name: bool = False, **kwargs) -> list[dict]:
    """[record] of one method, printed and written."""
    method_cfg, how = method_config(config, method)
    record = bench_method(method_cfg, notes=[n for n in (how, note) if n], **kwargs)
    print(format_table(record), flush=True)
    if out:
        print(f"  wrote {write_record(record, out, pair_in_name)}", flush=True)
    return [record]


BENCH_USAGE = ("usage: python -m jaxkd.bench --config configs/NAME.py [--config.key=value ...] [--methods=all] "
               "[--steps N] [--repeats R] [--out DIR]; the input path: python -m jaxkd.bench --input ROOT "
               "[--workers 0,1,N] (jaxkd/tools/bench_input.py)")


def _define_bench_flags(flag_values) -> None:
    from absl import flags

    flags.DEFINE_string("methods", "", "'' = the config's method; 'all' = every registered method; or a comma "
                        "list. Other methods take their loss weights and sections from their recipe (jaxkd/config/recipes.py)",
                        flag_values=flag_values)
    flags.DEFINE_integer("steps", 20, "train steps per timed repeat", flag_values=flag_values)
    flags.DEFINE_integer("repeats", 5, "timed repeats (the median is reported)", flag_values=flag_values)
    flags.DEFINE_integer("warmup_steps", 2, "untimed steps after compilation", flag_values=flag_values)
    flags.DEFINE_integer("epoch_images", 0, "images in the timed epoch (0 = 20 batches; 50000 = CIFAR's)",
                         flag_values=flag_values)
    flags.DEFINE_enum("dtype", "", ["", *COMPUTE_DTYPES], "compute dtype of both models (PyTorch: autocast); "
                      "'' = the config's `dtype`", flag_values=flag_values)
    flags.DEFINE_integer("num_devices", 1, "devices for the jaxkd step (0 = all)", flag_values=flag_values)
    flags.DEFINE_boolean("torch", True, "also time the PyTorch step", flag_values=flag_values)
    flags.DEFINE_integer("torch_threads", 0, "PyTorch intra-op threads (0 = PyTorch's default, one per core)",
                         flag_values=flag_values)
    flags.DEFINE_string("torch_modes", "eager", f"the PyTorch step's modes, timed side by side: a comma list of "
                        f"{', '.join(TORCH_MODES)} (the last two: torch.compile's modes)", flag_values=flag_values)
    flags.DEFINE_enum("torch_compile_backend", "inductor", ["inductor", "aot_eager"], "torch.compile's backend "
                      "(aot_eager: the same graphs without code generation, for quick checks)",
                      flag_values=flag_values)
    flags.DEFINE_string("pairs", "", "'' = the config's model and teacher.arch; 'repdistiller' = RepDistiller's 13 "
                        "benchmark pairs; or TEACHER:STUDENT,... (records then name the pair)",
                        flag_values=flag_values)
    flags.DEFINE_string("out", "", "folder for the JSON records (default: none written; the recorded ones are in "
                        "benchmarks/results)",
                        flag_values=flag_values)
    flags.DEFINE_string("ab", "", f"'' = no A/B; '{AB_YNN}' = the jaxkd step without vs with the CPU YNN compiler "
                        "option; a boolean config key (e.g. data.saliencymix) = the config with it False vs True; "
                        "KEY=A,B (e.g. steps_per_dispatch=1,16) = the config with KEY=A vs KEY=B. The two steps "
                        "are timed interleaved in this process", flag_values=flag_values)
    flags.DEFINE_string("num_runs", "", "'' = none; a comma list of N (e.g. 1,2,4,8): also time N independent "
                        "runs (seeds seed..seed+N-1) trained in one program, jax.vmap over their stacked states, "
                        "reporting the aggregate images/s (a prototype: jaxkd.tools.multi_run)", flag_values=flag_values)
    flags.DEFINE_string("note", "", "a free-text note stored in the records (e.g. the XLA_FLAGS tried)",
                        flag_values=flag_values)


def _bench_command(argv) -> None:
    flags_ = parse_config_command_line(argv, _define_bench_flags, BENCH_USAGE)
    run(flags_.config, methods=flags_.methods, steps=flags_.steps, repeats=flags_.repeats,
        warmup_steps=flags_.warmup_steps, epoch_images=flags_.epoch_images, dtype_name=flags_.dtype,
        num_devices=flags_.num_devices, with_torch=flags_.torch, torch_modes=flags_.torch_modes,
        compile_backend=flags_.torch_compile_backend, torch_threads=flags_.torch_threads, pairs=flags_.pairs,
        out=flags_.out, note=flags_.note, ab=flags_.ab, num_runs=flags_.num_runs)


def main(argv=None) -> int:
    """The step benchmark's command (`python -m jaxkd.bench` hands `--input` command lines to bench_input)."""
    return run_command(_bench_command, sys.argv if argv is None else argv)


if __name__ == "__main__":
    host_allocator.keep_freed_memory()  # before JAX starts its threads
    sys.exit(main())
