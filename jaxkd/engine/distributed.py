"""Runs that span several processes (a multi-host TPU slice, several GPU hosts): JAX's distributed runtime.

Every process runs the same command. `initialize` starts `jax.distributed` when the run is multi-process: when
the coordinator is given (flags, or `JAX_COORDINATOR_ADDRESS` with `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`), or
when JAX detects a managed cluster of several processes (Cloud TPU VM slices, SLURM, Open MPI). After that,
`jax.devices()` lists the devices of every process, the `data` mesh spans them all, and the same jitted step
runs everywhere. The rest of the project asks this module two questions: whether this process does the run's
side effects (`is_primary`: metric files, messages, exports), and how to keep processes in step (`barrier`,
`agree`, `preemption_requested`).
"""

import os

import jax
import numpy as np

from jaxkd.errors import UserError

# Managed clusters whose launchers start one process per host with the topology in the environment.
_DETECTED_CLUSTERS = ("GceTpuCluster", "GkeTpuCluster", "SlurmCluster", "OmpiCluster")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name} must be an integer, got {value!r}") from None


def _detected_cluster_processes() -> int:
    """How many processes a cluster JAX knows how to detect says this run has (1 when none is detected)."""
    try:
        from jax._src import clusters  # JAX's own detection; private, hence the guard
    except ImportError:
        return 1
    for cluster in clusters.ClusterEnv._cluster_types:
        if cluster.__name__ in _DETECTED_CLUSTERS and cluster.is_env_present():
            return int(cluster.get_process_count())
    return 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Starts JAX's distributed runtime if this run spans several processes; returns whether it did.

    Unset arguments come from `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`, then from the
    detected cluster. A single process (the default) starts nothing."""
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if not explicit and _detected_cluster_processes() <= 1:
        return False
    if num_processes == 1:
        return False
    if explicit and None in (coordinator_address, num_processes, process_id):
        raise UserError("a multi-process run needs the coordinator address (host:port of process 0), the number "
                        "of processes and this process's id: pass --coordinator_address, --num_processes and "
                        "--process_id (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    if explicit and not 0 <= process_id < num_processes:
        raise UserError(f"process id {process_id} is not in 0..{num_processes - 1}")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True


def add_process_arguments(parser) -> None:
    """The multi-process options of an argparse command (`jaxkd.tools.evaluate`, `jaxkd.tools.robustness`); pass them to
    `initialize` as `args.coordinator_address, args.num_processes, args.process_id`."""
    group = parser.add_argument_group("multi-process runs (docs/scale_out.md); also read from "
                                      "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID or a detected "
                                      "cluster")
    # both spellings: these commands' own (--num-processes) and jaxkd.train's (--num_processes)
    group.add_argument("--coordinator-address", "--coordinator_address", dest="coordinator_address",
                       help="host:port of process 0")
    group.add_argument("--num-processes", "--num_processes", dest="num_processes", type=int,
                       help="how many processes")
    group.add_argument("--process-id", "--process_id", dest="process_id", type=int,
                       help="this process's id, 0..num-processes-1")


def print_once(*args, **kwargs) -> None:
    """`print`, in process 0 only: a message for the user, printed once however many processes run."""
    if is_primary():
        print(*args, **kwargs)


def is_multiprocess() -> bool:
    return jax.process_count() > 1


def is_primary() -> bool:
    """Whether this process writes the run's metrics, messages and exports (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (nothing to wait for in a single process)."""
    if is_multiprocess():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(value: int) -> int:
    """Process 0's `value`, on every process (e.g. a random name every process must use)."""
    if not is_multiprocess():
        return int(value)
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def preemption_requested(counter: int) -> bool:
    """In a multi-process run, whether every process has reached the point at which to save and stop after a
    preemption notice (SIGTERM) reached any of them: JAX's preemption sync point, the same point everywhere.
    Call it with 0, 1, 2, ... at the same points of the program in every process (the sync point is a value
    of `counter`, so it must not skip values)."""
    from jax.experimental import multihost_utils

    return bool(multihost_utils.reached_preemption_sync_point(int(counter)))
