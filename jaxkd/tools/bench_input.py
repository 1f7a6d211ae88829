"""`python -m jaxkd.bench --input ROOT`: the streaming input path's throughput on the host, beside torchvision's.

For each worker count of `--workers`, the images/s of
* `jaxkd loader`: `jaxkd.data.streaming.make_train_iterator` on `ImageFolderSource(ROOT, split)`: Pillow's decode,
  `RandomResizedCrop(image_size)` + horizontal flip, stacked into the uint8 (batch, S, S, 3) batch the training
  step receives (it normalizes on the device); `workers` Grain processes, each reading with `threads` threads
  (0: the threads of this process; `--threads 1` compares one thread per process with torchvision's workers);
* `torchvision DataLoader`: `DataLoader(ImageFolder(ROOT/split, transform=Compose([RandomResizedCrop(S),
  RandomHorizontalFlip(), ToTensor(), Normalize(ImageNet's mean, std)])), batch_size, shuffle=True,
  num_workers=workers, drop_last=True)`, the float32 (batch, 3, S, S) batches a PyTorch step receives
  (torchvision's ImageNet recipe, references/classification/presets.py; 0 workers: the main thread).
Each measurement starts a new loader (its workers), reads untimed as many batches as the loader makes ahead
(`loader_buffer`) plus `--warmup_batches` (the start; batches made while the first was awaited would otherwise
count as made in no time), then times `--batches` batches: the loader's steady rate. The two loaders
alternate, measurement by measurement, which runs first switching each repeat, so that load from other processes
hits both alike; the record holds per-repeat seconds, the medians and the ratio jaxkd / torchvision per worker
count (the median of per-repeat ratios), the start-up times, the batches' shapes and types, and the machine with
its load average. `--input tfds:NAME` times the loader on a TFDS dataset
(`--data_dir`), without a torchvision part (ImageFolder reads folders only).

torchvision is loaded from its pure-Python modules without its C extension (the wheel on the package index is built
against CUDA torch and fails to import beside a CPU torch): jaxkd/pytorch/torchvision_modules.py.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import os
import statistics
import time
from pathlib import Path

from jaxkd.config.command_line import HELP_FLAGS
from jaxkd.data.streaming.loader import make_train_iterator
from jaxkd.data.streaming.sources import ImageFolderSource, TfdsImageSource
from jaxkd.data.streaming.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageTransforms
from jaxkd.errors import UserError
from jaxkd.io.safe_write import check_output_directory
from jaxkd.pytorch.torchvision_modules import torchvision_module
from jaxkd.tools import bench
from jaxkd.tools.bench_timing import Part

TFDS_PREFIX = "tfds:"
JAXKD, TORCHVISION = "jaxkd loader", "torchvision DataLoader"
# PyTorch's intra-op threads in this process while its loader runs (its workers set 1 themselves): ToTensor and
# Normalize of one image are too small to split, and on a loaded 2-core machine 2 threads made the in-process loader
# 15x slower (12 against 190 images/s) by OpenMP's waits
TORCH_THREADS = 1
USAGE = ("usage: python -m jaxkd.bench --input ROOT|tfds:NAME [--split train] [--workers 0,1,2] [--batch_size 32] "
         "[--batches 16] [--warmup_batches 2] [--repeats 3] [--image_size 224] [--threads 8] [--notorch] "
         "[--data_dir DIR] [--out DIR] [--note TEXT]")


def open_source(name: str, split: str, data_dir: str):
    """The streaming source `--input` names: an ImageFolder root (its `split` folder) or `tfds:NAME`."""
    if name.startswith(TFDS_PREFIX):
        return TfdsImageSource(name[len(TFDS_PREFIX):], split, data_dir or None)
    return ImageFolderSource(name, split, classes_from=split)


def loader_buffer(library: str, workers: int, threads: int) -> int:
    """How many batches a loader makes ahead of the one awaited: jaxkd's reading threads each prefetch one
    (`ReadOptions(prefetch_buffer_size=threads)`), in each worker plus its output buffer
    (`per_worker_buffer_size=1`); torchvision's DataLoader `prefetch_factor` (2) per worker."""
    if library == JAXKD:
        return threads if workers == 0 else workers * (threads + 1)
    return 2 * workers


def jaxkd_part(source, transforms: ImageTransforms, batch: int, batches: int, warmup: int, workers: int,
               threads: int, seed: int) -> Part:
    """The streaming loader's training batches with `workers` processes, as a timed `Part` (`warmup` untimed
    batches after its buffer's)."""
    warmup += loader_buffer(JAXKD, workers, threads)
    part = Part(f"{JAXKD} [workers={workers}]", batches * batch, lambda: 0.0,
                info={"workers": workers, "threads": threads, "untimed_batches": warmup, "startup_seconds": [],
                      "main_process_cpu_seconds": []})

    def run() -> float:
        start = time.perf_counter()
        with make_train_iterator(source, transforms, seed + len(part.seconds), batch, workers=workers,
                                 threads=threads) as iterator:
            for _ in range(warmup):
                first = next(iterator)
            ready, cpu_ready = time.perf_counter(), time.process_time()
            for _ in range(batches):
                next(iterator)
            end, cpu_end = time.perf_counter(), time.process_time()
        part.info["startup_seconds"].append(ready - start)
        part.info["main_process_cpu_seconds"].append(cpu_end - cpu_ready)
        part.info["batch"] = {"shape": list(first["image"].shape), "dtype": str(first["image"].dtype)}
        return end - ready

    part.run = run
    return part


def torchvision_part(folder: Path, image_size: int, batch: int, batches: int, warmup: int, workers: int,
                     seed: int) -> Part:
    """torchvision's `DataLoader(ImageFolder(folder, ImageNet's training transform))` with `workers`, as a
    timed `Part` (`warmup` untimed batches after its buffer's)."""
    warmup += loader_buffer(TORCHVISION, workers, 1)
    import torch
    from torch.utils.data import DataLoader

    datasets, transforms = torchvision_module("datasets.folder"), torchvision_module("transforms")
    transform = transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    # pil_loader: what ImageFolder's default_loader calls under torchvision's default image backend (PIL); the
    # default_loader itself asks the package `__init__` that is not run here
    dataset = datasets.ImageFolder(str(folder), transform=transform, loader=datasets.pil_loader)
    part = Part(f"{TORCHVISION} [workers={workers}]", batches * batch, lambda: 0.0,
                info={"workers": workers, "torch_threads": TORCH_THREADS, "untimed_batches": warmup,
                      "startup_seconds": [], "main_process_cpu_seconds": []})

    def run() -> float:
        threads_before = torch.get_num_threads()
        torch.set_num_threads(TORCH_THREADS)
        try:
            return timed()
        finally:
            torch.set_num_threads(threads_before)

    def timed() -> float:
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(seed + len(part.seconds))
        loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                            generator=generator)
        iterator = iter(loader)
        for _ in range(warmup):
            images, _ = next(iterator)
        ready, cpu_ready = time.perf_counter(), time.process_time()
        for _ in range(batches):
            next(iterator)
        end, cpu_end = time.perf_counter(), time.process_time()
        del iterator  # stops its worker processes
        part.info["startup_seconds"].append(ready - start)
        part.info["main_process_cpu_seconds"].append(cpu_end - cpu_ready)
        part.info["batch"] = {"shape": list(images.shape), "dtype": str(images.dtype).removeprefix("torch.")}
        return end - ready

    part.run = run
    return part


def parse_workers(text: str) -> list[int]:
    """`--workers`: a comma list of worker counts >= 0, e.g. 0,1,2."""
    try:
        counts = [int(word) for word in text.split(",") if word.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 0:
        raise UserError(f"--workers {text}: a comma list of worker counts >= 0, e.g. 0,1,2")
    return counts


def bench_input(input_name: str, *, split: str = "train", workers=(0,), batch: int = 32, batches: int = 16,
                warmup: int = 2, repeats: int = 3, image_size: int = 224, threads: int = 8, with_torch: bool = True,
                data_dir: str = "", seed: int = 0, notes=()) -> dict:
    """Times the loaders (module docstring) and returns the record."""
    if min(batch, batches, warmup, repeats, image_size, threads) < 1:
        raise UserError(f"--batch_size, --batches, --warmup_batches, --repeats, --image_size and --threads must be "
                        f">= 1 (got {batch}, {batches}, {warmup}, {repeats}, {image_size}, {threads})")
    source = open_source(input_name, split, data_dir)
    with_torch = with_torch and not input_name.startswith(TFDS_PREFIX)
    needed = (warmup + batches + loader_buffer(TORCHVISION, max(workers), 1)) * batch if with_torch else batch
    if len(source) < needed:
        raise UserError(f"{input_name} ({split}) holds {len(source)} images; the loaders need {needed} in one epoch "
                        f"(--warmup_batches + --batches + torchvision's 2 per worker, of --batch_size): write more "
                        f"(benchmarks/make_photos.py --train N) or ask for fewer")
    notes = list(notes)
    if not with_torch and input_name.startswith(TFDS_PREFIX):
        notes.append("no torchvision part: ImageFolder reads folders only")
    transforms = ImageTransforms(train_size=image_size)
    pairs = [(jaxkd_part(source, transforms, batch, batches, warmup, w, threads, seed),
              torchvision_part(Path(input_name) / split, image_size, batch, batches, warmup, w, seed)
              if with_torch else None) for w in workers]
    load_before = os.getloadavg()
    for repeat in range(repeats):
        for pair in pairs:
            for part in (pair if repeat % 2 == 0 else pair[::-1]):
                if part is not None:
                    part.seconds.append(part.run())
    load_after = os.getloadavg()

    results = {}
    for ours, theirs in pairs:
        for part in (ours, theirs) if theirs is not None else (ours,):
            results[part.name] = part.summary()
            if part.info["workers"] == 0:  # all the work in this process: its CPU time is the loader's
                results[part.name]["images_per_cpu_second"] = \
                    part.images / statistics.median(part.info["main_process_cpu_seconds"])
        if theirs is not None:
            ratios = [t / j for j, t in zip(ours.seconds, theirs.seconds)]  # equal images: time ratio = speed's
            results.setdefault("ratio_jaxkd_over_torchvision", {})[str(ours.info["workers"])] = \
                statistics.median(ratios)
            results.setdefault("ratio_jaxkd_over_torchvision_per_repeat", {})[str(ours.info["workers"])] = ratios
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "version": bench.RECORD_VERSION, "method": "input",
        "date": datetime.date.today().isoformat(),
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "input": input_name, "split": split, "input_images": len(source), "image_size": image_size,
        "batch_size": batch, "batches": batches, "warmup_batches": warmup, "repeats": repeats,
        "workers": list(workers), "threads": threads, "torchvision": with_torch,
        "transforms": f"decode (Pillow) + RandomResizedCrop({image_size}, scale (0.08, 1), ratio (3/4, 4/3), "
                      f"bilinear) + RandomHorizontalFlip; jaxkd: uint8 NHWC (normalized on the device), "
                      f"torchvision: + ToTensor + Normalize, float32 NCHW",
        "results": results,
        "device": {"platform": "cpu", "device_kind": "host", "cpu_model": bench.cpu_model(),
                   "host_cpus": os.cpu_count(), "host_cpus_usable": usable},
        "thread_settings": bench.thread_settings(), "versions": {**bench.versions(), **_input_versions()},
        "git_commit": bench.git_commit(), "load_average_before": load_before, "load_average_after": load_after,
        "notes": notes,
    }


def _input_versions() -> dict:
    out = {}
    for module in ("grain", "PIL"):
        try:
            out[module] = importlib.import_module(module).__version__
        except (ImportError, AttributeError):
            pass
    spec = importlib.util.find_spec("torchvision")
    if spec is not None:
        try:
            out["torchvision"] = torchvision_module("version").__version__
        except (ImportError, AttributeError):
            pass
    return out


def format_input_table(record: dict) -> str:
    results = record["results"]
    device = record["device"]
    lines = [(f"input: {record['input']} ({record['split']}, {record['input_images']} images), batch "
              f"{record['batch_size']}, {record['image_size']} px, median of {record['repeats']} x "
              f"{record['batches']} batches, {device['cpu_model']} ({device['host_cpus_usable']} CPUs usable), "
              f"load {record['load_average_before'][0]:.1f}-{record['load_average_after'][0]:.1f}"),
             f"  {'workers':>7} {JAXKD + ' img/s':>20} {TORCHVISION + ' img/s':>28} {'ratio':>7}"]
    for workers in record["workers"]:
        ours = results[f"{JAXKD} [workers={workers}]"]["images_per_s"]
        theirs = results.get(f"{TORCHVISION} [workers={workers}]", {}).get("images_per_s")
        ratio = results.get("ratio_jaxkd_over_torchvision", {}).get(str(workers))
        lines.append(f"  {workers:>7} {ours:>20.1f} {theirs if theirs is not None else float('nan'):>28.1f} "
                     f"{ratio if ratio is not None else float('nan'):>7.3f}")
    per_cpu = [f"{name} {results[f'{name} [workers=0]']['images_per_cpu_second']:.1f}" for name in (JAXKD, TORCHVISION)
               if f"{name} [workers=0]" in results]
    if per_cpu:
        lines.append(f"  images per CPU-second in this process (workers 0): {', '.join(per_cpu)}")
    lines += [f"  note: {note}" for note in record["notes"]]
    return "\n".join(lines)


def _define_flags(flag_values) -> None:
    from absl import flags

    flags.DEFINE_string("input", None, "an ImageFolder root (ROOT/<split>/<class>/<image>) or tfds:NAME",
                        flag_values=flag_values)
    flags.DEFINE_string("split", "train", "the folder (or TFDS split) read", flag_values=flag_values)
    flags.DEFINE_string("workers", f"0,1,{os.cpu_count()}", "worker counts to time, a comma list (0: jaxkd's "
                        "threads, torchvision's main thread)", flag_values=flag_values)
    flags.DEFINE_integer("batch_size", 32, "images per batch", flag_values=flag_values)
    flags.DEFINE_integer("batches", 16, "timed batches per measurement", flag_values=flag_values)
    flags.DEFINE_integer("warmup_batches", 2, "untimed batches after those the loader makes ahead (its start)",
                         flag_values=flag_values)
    flags.DEFINE_integer("repeats", 3, "measurements per loader and worker count (the median is reported)",
                         flag_values=flag_values)
    flags.DEFINE_integer("image_size", 224, "RandomResizedCrop's size", flag_values=flag_values)
    flags.DEFINE_integer("threads", 8, "jaxkd's reading threads (per process)", flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "the loaders' seed (plus the repeat)", flag_values=flag_values)
    flags.DEFINE_boolean("torch", True, "also time torchvision's DataLoader", flag_values=flag_values)
    flags.DEFINE_string("data_dir", "", "where a tfds:NAME input is prepared", flag_values=flag_values)
    flags.DEFINE_string("out", "", "folder for the JSON record (default: none written)", flag_values=flag_values)
    flags.DEFINE_string("note", "", "a free-text note stored in the record", flag_values=flag_values)


def input_command(argv) -> None:
    """The `--input` command line: parses it, times, prints the table and writes the record."""
    from absl import flags

    flag_values = flags.FlagValues()
    _define_flags(flag_values)
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print("\n".join([USAGE, "", "flags:"] + [f"  --{name}: {flag.help}" for name, flag in
                                                  sorted(flag_values._flags().items()) if name == flag.name]))
        raise SystemExit(0)
    try:
        flag_values(list(argv))
    except flags.Error as error:
        raise UserError(f"{error} ({USAGE})") from None
    if not flag_values.input:
        raise UserError(USAGE)
    if flag_values.out:
        check_output_directory(flag_values.out, "--out")
    record = bench_input(flag_values.input, split=flag_values.split, workers=parse_workers(flag_values.workers),
                         batch=flag_values.batch_size, batches=flag_values.batches,
                         warmup=flag_values.warmup_batches, repeats=flag_values.repeats,
                         image_size=flag_values.image_size, threads=flag_values.threads,
                         with_torch=flag_values.torch, data_dir=flag_values.data_dir, seed=flag_values.seed,
                         notes=[flag_values.note] if flag_values.note else [])
    print(format_input_table(record), flush=True)
    if flag_values.out:
        print(f"  wrote {bench.write_record(record, flag_values.out)}", flush=True)
