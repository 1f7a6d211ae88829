"""The wall time a user sees for a whole training run, on synthetic data:
`python -m jaxkd.bench_full_run --workdir DIR [--out benchmarks/results] [--time_limit S] [--train_images N]
[--test_images M] [-- --config.key=value ...]`.

It writes a CIFAR-100-shaped dataset of random images and labels in the `cifar-100-python` format (50,000
training and 10,000 test images by default) and a teacher of random weights (a model checkpoint of
`config.teacher.arch`), then runs, as a user would, `python -m jaxkd.train --config configs/kd_wrn.py` (KD
wrn40_2 -> wrn16_2, RepDistiller's 240-epoch recipe: an evaluation every epoch, a checkpoint every 10 and at the
end, the final exports) on them, with the given `--config` overrides. The wall time runs from starting that
process to its exit; each epoch's end is stamped as its line ("epoch k/E: ...") arrives.

`--time_limit S`: after S seconds the run gets SIGTERM, as a preempted job would (it saves a checkpoint and
exits); a SIGTERM to this command does the same. The record then holds the epochs done and an estimate of the
whole run's wall time: the time to the first epoch's end (start-up, compiles, the first epoch) plus the median
time of the later epochs times the epochs left, marked as an estimate.

The record goes to `--out` as `<date>-<device>-full-run-<method>-<teacher>-<student>.json` (never overwriting).
"""

from __future__ import annotations

import datetime
import json
import os
import pickle
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from jaxkd.config.command_line import parse_config_command_line
from jaxkd.errors import UserError, run_command
from jaxkd.io.model_checkpoint import save_model_checkpoint
from jaxkd.io.safe_write import check_output_directory
from jaxkd.models import canonical_name, get_model
from jaxkd.tools.bench import device_info, git_commit, versions, write_record

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/kd_wrn.py"
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+): ")


def write_synthetic_cifar100(folder: Path, train_images: int, test_images: int, seed: int = 0) -> None:
    """`folder`/train and test (and meta) in the cifar-100-python pickle format, random uint8 images (CHW rows)
    and random fine labels."""

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train_images), ("test", test_images)):
        entry = {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 "fine_labels": rng.integers(0, 100, count).tolist()}
        (folder / split).write_bytes(pickle.dumps(entry, protocol=4))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"class{i}" for i in range(100)]}))


def write_random_teacher(directory: Path, arch: str, seed: int = 1) -> None:
    """A model checkpoint of `arch` (100 classes) with its initial random weights."""


    arch = canonical_name(arch)
    variables = get_model(arch, 100).init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3)), train=False)
    save_model_checkpoint(directory, variables, {"arch": arch, "num_classes": 100,
                                                 "source": "random weights (jaxkd.tools.bench_full_run)"})


def estimate_total_s(epoch_end_s: list[float], epochs: int) -> float | None:
    """The whole run's wall time from the first epochs' end times (seconds since the start): the first epoch's
    end (start-up and compiles included) plus the median later epoch times the epochs left. The final exports
    are not in it. None without two epochs."""
    if len(epoch_end_s) < 2:
        return None
    per_epoch = statistics.median(b - a for a, b in zip(epoch_end_s, epoch_end_s[1:]))
    return epoch_end_s[0] + per_epoch * (epochs - 1)


def run(workdir: Path, out: str, time_limit: float, train_images: int, test_images: int,
        overrides: list[str]) -> dict:

    config = parse_config_command_line(["bench_full_run", f"--config={REPO / CONFIG}", *overrides],
                                       lambda _: None, USAGE).config
    if workdir.exists():
        raise UserError(f"--workdir {workdir}: exists; give a new folder (the run must start from scratch)")
    prepare_start = time.perf_counter()
    data_dir, teacher_dir, run_dir = workdir / "cifar-100-python", workdir / "teacher", workdir / "run"
    write_synthetic_cifar100(data_dir, train_images, test_images)
    write_random_teacher(teacher_dir, config.teacher.arch)
    prepare_s = time.perf_counter() - prepare_start


    command = [sys.executable, "-m", "jaxkd.train", "--config", CONFIG, "--workdir", str(run_dir),
               "--config.data.source=cifar100-python", f"--config.data.data_dir={data_dir}",
               f"--config.teacher.checkpoint={teacher_dir}", "--config.progress_bar=False", *overrides]
    print("$", " ".join(command), flush=True)
    stopped = threading.Event()
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: stopped.set())  # the child got it too (group)
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             bufsize=1)
    epoch_end_s, epochs = [], config.epochs
    timer = threading.Timer(time_limit, lambda: (stopped.set(), child.send_signal(signal.SIGTERM))) \
        if time_limit else None
    if timer:
        timer.start()
    try:
        for line in child.stdout:
            now = time.perf_counter() - start
            print(line, end="", flush=True)
            match = EPOCH_LINE.match(line)
            if match:
                epoch_end_s.append(now)
        returncode = child.wait()
    finally:
        if timer:
            timer.cancel()
        signal.signal(signal.SIGTERM, previous_handler)
    wall_s = time.perf_counter() - start
    completed = returncode == 0 and len(epoch_end_s) == epochs
    estimate = None if completed else estimate_total_s(epoch_end_s, epochs)
    per_epoch = [b - a for a, b in zip(epoch_end_s, epoch_end_s[1:])]
    rows = ([json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
            if (run_dir / "metrics.jsonl").exists() else [])
    images_per_s = [row["images_per_s"] for row in rows if row.get("kind") == "train" and "images_per_s" in row]
    record = {
        "kind": "full_run", "date": datetime.date.today().isoformat(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": f"full-run-{config.method}", "teacher": config.teacher.arch, "student": config.model,
        "config": CONFIG, "overrides": overrides, "command": command[1:],
        "data": f"synthetic cifar-100-python, {train_images} training and {test_images} test images",
        "teacher_weights": "random", "batch_size": config.batch_size, "epochs": epochs,
        "returncode": returncode, "completed": completed, "stopped_by_time_limit": stopped.is_set(),
        "time_limit_s": time_limit or None, "wall_s": wall_s, "epochs_done": len(epoch_end_s),
        "epoch_end_s": epoch_end_s, "first_epoch_end_s": epoch_end_s[0] if epoch_end_s else None,
        "median_epoch_s": statistics.median(per_epoch) if per_epoch else None,
        "estimated_total_wall_s": estimate,
        "train_images_per_s_median": statistics.median(images_per_s) if images_per_s else None,
        "prepare_s": prepare_s, "device": device_info(jax.devices()[:1]), "versions": versions(),
        "git_commit": git_commit(), "load_average_after": os.getloadavg(),
    }
    minutes = (f"{wall_s / 60:.1f} min, complete" if completed else
               f"{wall_s / 60:.1f} min for {len(epoch_end_s)} of {epochs} epochs (exit {returncode}); whole run "
               f"estimated {estimate / 60:.1f} min" if estimate else f"{wall_s / 60:.1f} min, exit {returncode}")
    print(f"full run {config.method} {config.teacher.arch} -> {config.model}: {minutes}", flush=True)
    if out:
        print(f"  wrote {write_record(record, out, pair_in_name=True)}", flush=True)
    return record


USAGE = ("usage: python -m jaxkd.bench_full_run --workdir DIR [--out DIR] [--time_limit S] [--train_images N] "
         "[--test_images M] [-- --config.key=value ...]")


def parse_command_line(argv):
    """(flag values, config overrides: the words after `--`) of a command line; checks the overrides against
    the config. A bad command line raises UserError."""


    own, overrides = argv[1:], []
    if "--" in argv:
        split = argv.index("--")
        own, overrides = argv[1:split], argv[split + 1:]
    flag_values = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "a new folder: the data, the teacher and the run", flag_values=flag_values)
    flags.DEFINE_string("out", "benchmarks/results", "folder for the JSON record ('' = none)",
                        flag_values=flag_values)
    flags.DEFINE_float("time_limit", 0, "seconds before the run is stopped (SIGTERM) and estimated; 0 = none; "
                       "negative: that many seconds before $JAXKD_PART_LIMIT (benchmarks/gpu/run.sh's limit of the "
                       "part), none without it", flag_values=flag_values)
    flags.DEFINE_integer("train_images", 50000, "synthetic training images", flag_values=flag_values)
    flags.DEFINE_integer("test_images", 10000, "synthetic test images", flag_values=flag_values)
    try:
        flag_values(["bench_full_run", *own])
    except flags.Error as error:
        raise UserError(f"{error} ({USAGE})") from None
    if not flag_values.workdir:
        raise UserError(USAGE)
    parse_config_command_line(["bench_full_run", f"--config={REPO / CONFIG}", *overrides], lambda _: None, USAGE)
    return flag_values, overrides


def _command(argv) -> None:

    flag_values, overrides = parse_command_line(argv)
    if flag_values.out:
        check_output_directory(flag_values.out, "--out")
    time_limit = flag_values.time_limit
    if time_limit < 0:
        part_limit = os.environ.get("JAXKD_PART_LIMIT", "")
        time_limit = max(float(part_limit) + time_limit, 1.0) if part_limit else 0.0
    run(Path(flag_values.workdir).absolute(), flag_values.out, time_limit, flag_values.train_images,
        flag_values.test_images, overrides)


def main(argv=None) -> int:

    return run_command(_command, sys.argv if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
