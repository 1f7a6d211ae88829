"""When `jaxkd.engine.distributed.initialize` starts JAX's distributed runtime, and its one-line errors. The runtime
itself is exercised for real by tests/test_scale_out.py; here `jax.distributed.initialize` is replaced by a
recorder so that the test process stays single-process."""

import jax
import pytest

from jaxkd.engine import distributed
from jaxkd.errors import UserError

SLURM = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
JAXKD_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


@pytest.fixture
def calls(monkeypatch):
    recorded = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args: recorded.append(args))
    for name in (*JAXKD_ENV, "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri"):
        monkeypatch.delenv(name, raising=False)
    return recorded


def test_a_plain_run_starts_nothing(calls):
    assert distributed.initialize() is False and calls == []


def test_flags_start_the_runtime(calls):
    assert distributed.initialize("10.0.0.2:1234", 2, 1) is True
    assert calls == [("10.0.0.2:1234", 2, 1)]


def test_environment_starts_the_runtime(calls, monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.2:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert distributed.initialize() is True and calls == [("10.0.0.2:1234", 4, 3)]


def test_one_explicit_process_starts_nothing(calls):
    assert distributed.initialize("localhost:1234", 1, 0) is False and calls == []


@pytest.mark.parametrize("tasks, started", [("1", False), ("2", True)])
def test_a_slurm_job_of_several_tasks_is_detected(tasks, started, calls, monkeypatch):
    for name, value in {**SLURM, "SLURM_NTASKS": tasks}.items():
        monkeypatch.setenv(name, value)
    assert distributed.initialize() is started
    assert calls == ([(None, None, None)] if started else [])  # JAX reads the rest from SLURM


@pytest.mark.parametrize("arguments, message", [
    (("localhost:1234", 2, None), "needs the coordinator address"),
    ((None, 2, 0), "needs the coordinator address"),
    (("localhost:1234", 2, 2), "process id 2 is not in 0..1"),
])
def test_incomplete_or_wrong_settings_are_one_line(arguments, message, calls):
    with pytest.raises(UserError, match=message):
        distributed.initialize(*arguments)
    assert calls == []


def test_non_integer_environment_is_one_line(calls, monkeypatch):
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(UserError, match="JAX_NUM_PROCESSES must be an integer, got 'two'"):
        distributed.initialize()


def test_single_process_helpers_need_no_runtime():
    assert distributed.is_primary() and not distributed.is_multiprocess()
    assert distributed.agree(12345) == 12345
    distributed.barrier("nothing to wait for")
