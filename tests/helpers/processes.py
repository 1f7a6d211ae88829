"""Training and evaluation commands as separate processes: one, or several joined by `jax.distributed` through a
loopback coordinator, each with its own number of simulated CPU devices (tests/test_scale_out.py,
tests/test_train_streaming.py)."""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def launch(module: str, *arguments, processes: int = 1, devices_per_process: int = 1):
    """Starts `python -m module arguments`: one process, or `processes` joined through a loopback coordinator."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}
    command = [sys.executable, "-m", module, *map(str, arguments)]
    if processes == 1:
        return [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)]
    port = free_port()
    return [subprocess.Popen(command + [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
                                        f"--process_id={rank}"],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for rank in range(processes)]


def finish(processes, timeout=600, after_a_failure=60):
    """[(returncode, stdout, stderr)] of each process. Once one has failed, the others get `after_a_failure`
    seconds before they are killed: a peer left alone waits minutes for the coordination service."""
    outputs = [None] * len(processes)

    def read(index):
        outputs[index] = processes[index].communicate()

    readers = [threading.Thread(target=read, args=(index,)) for index in range(len(processes))]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout
    try:
        while any(process.poll() is None for process in processes):
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(processes[0].args, timeout)
            if any(process.returncode not in (None, 0) for process in processes):
                deadline = min(deadline, time.monotonic() + after_a_failure)
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        for reader in readers:
            reader.join()
    return [(process.returncode, *output) for process, output in zip(processes, outputs)]


def worst_ratio(reference: dict, other: dict) -> float:
    """Per tensor max|diff| / (1e-4 * max|reference| + 1e-5), the worst over the tree (> 1 fails): two layouts of
    one run, apart only by the order of floating-point reductions."""
    worst = 0.0
    for (path, a), (path_b, b) in zip(jax.tree_util.tree_leaves_with_path(reference),
                                      jax.tree_util.tree_leaves_with_path(other), strict=True):
        assert path == path_b
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        worst = max(worst, float(np.max(np.abs(a - b))) / (1e-4 * float(np.max(np.abs(a))) + 1e-5))
    return worst
