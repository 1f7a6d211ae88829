"""How many Grain worker processes decode the streaming path's images.

`data.workers` (and `python -m jaxkd.evaluate --workers`): -1 (`HOST_CORES`, the default) = one worker process per
CPU core this process may use (its CPU affinity where the system has one, else `os.cpu_count()`), 0 = threads of
this process, N = N processes. The batches do not depend on it (jaxkd/data/streaming/loader.py), so a run may
resume with another count.

Evaluation reads a split of at most `SMALL_EVAL_SPLIT` images in threads whatever the count: starting workers
costs more than they save there (docs/data.md, "Workers and throughput")."""

from __future__ import annotations

import os

HOST_CORES = -1  # data.workers: one worker process per core this process may use
# Images: an evaluation split up to this size is decoded in threads. Measured on this project's 2-core machine
# (ImageNet-sized JPEGs, Resize(256) + CenterCrop(224)): threads decode 420-470 images/s, while 1-2 Grain workers
# take 1.7-4.3 s to hand over their first batch (5-14 s under heavier load), time in which threads decode
# 700-2,000 images; each evaluation pass would start them again.
SMALL_EVAL_SPLIT = 2_000


def host_cores() -> int:
    """The CPU cores this process may use: its affinity set (a launcher that pins processes to cores divides
    them), else every core of the host."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this system (macOS)
        return os.cpu_count() or 1


def worker_processes(setting: int) -> int:
    """The worker processes for a `data.workers` setting (-1: `host_cores()`; 0: none, threads)."""
    return host_cores() if setting == HOST_CORES else int(setting)


def eval_worker_processes(workers: int, num_images: int) -> int:
    """The worker processes that evaluate a split of `num_images`: none (threads) for a small split."""
    return 0 if num_images <= SMALL_EVAL_SPLIT else workers


def _processes(workers: int) -> str:
    return f"{workers} worker process{'es' if workers != 1 else ''}" if workers else "threads of this process"


def describe(option: str, setting: int, workers: int, num_eval_images: int, *, training: bool = True) -> str:
    """The log line of how the images are decoded (`option`: the setting's name, data.workers or --workers), e.g.
    "data: 16 worker processes (data.workers=-1: the host's cores); evaluation of 50000 images in them too"."""
    why = f" ({option}={HOST_CORES}: the host's cores)" if setting == HOST_CORES else ""
    if eval_worker_processes(workers, num_eval_images) != workers:
        evaluation = (f"evaluation of {num_eval_images} images in threads (a split of at most {SMALL_EVAL_SPLIT}: "
                      f"starting workers would take longer)")
    elif training:
        evaluation = f"evaluation of {num_eval_images} images in them too"
    else:
        return f"data: evaluation of {num_eval_images} images in {_processes(workers)}{why}"
    return f"data: {_processes(workers)}{why}; {evaluation}" if training else f"data: {evaluation}"
