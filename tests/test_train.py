"""The training engine end to end on the real digits data: learning, exact resume (also after Ctrl-C or SIGTERM,
every step logged once), one run per workdir, exports, bad configs and a diverging loss."""

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from configs import demo
from jaxkd.engine import loop
from jaxkd.engine.initial_state import create_train_state
from jaxkd.engine.loop import train_and_evaluate
from jaxkd.engine.setup import build
from jaxkd.engine.step import make_train_step, zero_sums
from jaxkd.errors import UserError
from jaxkd.io.stop_request import StopRequest
from jaxkd.pytorch.torch_models import get_torch_model
from jaxkd.train import main
from tests.helpers.assertions import assert_bitwise_equal
from tests.helpers.runs import SMALL_DIGITS, final_params, small_config, stop_during_call

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--config.model=resnet8", f"--config.data.digits_size={SMALL_DIGITS}", "--config.epochs=2",
         "--config.eval_every_epochs=1", "--config.checkpoint_every_epochs=1", "--config.log_every_steps=5",
         "--config.progress_bar=False"]  # the command line of small_config


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """Two epochs without interruption: the reference for the resume tests. Its output goes to a file (as under
    nohup), with the progress bar on; the workdir holds it as stdout.txt."""
    workdir = tmp_path_factory.mktemp("straight")
    config = small_config()
    config.progress_bar = True
    with open(workdir / "stdout.txt", "w") as stdout, contextlib.redirect_stdout(stdout):
        result = train_and_evaluate(config, workdir)
    return workdir, result


def test_output_to_a_file_gets_a_progress_line_at_every_log_step(straight_run):
    lines = (straight_run[0] / "stdout.txt").read_text().splitlines()
    progress = [line for line in lines if line.startswith("epoch 1/2 step ")]
    assert [line.split(":")[0] for line in progress] == [f"epoch 1/2 step {s}/22" for s in (5, 10, 15, 20, 22)]
    assert "loss " in progress[0] and " images/s" in progress[0] and "\r" not in "".join(lines)  # no bar


def logged_steps(workdir) -> list[tuple[int, str]]:
    return [(r["step"], r["kind"]) for r in map(json.loads, (Path(workdir) / "metrics.jsonl").read_text().splitlines())]


def test_resume_after_an_epoch_is_bitwise_exact(straight_run, tmp_path):
    train_and_evaluate(small_config(epochs=1), tmp_path)  # stops after epoch 1 (a finished run)
    # as if a run had gone on after that checkpoint (step 22) and been killed mid-write: logged, never saved
    with open(tmp_path / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 25, "kind": "train", "loss": 9.0}\n{"step": 30, "kind": "tr')
    result = train_and_evaluate(small_config(epochs=2), tmp_path)  # the same run, extended: resumes at step 22
    assert result["step"] == 44
    assert_bitwise_equal(final_params(tmp_path), final_params(straight_run[0]))
    assert logged_steps(tmp_path) == logged_steps(straight_run[0])  # every step logged once, the killed rows gone
    # the same values too: losses, accuracies, evaluations and the best so far; and the same final and best top-1
    assert _rows(tmp_path) == _rows(straight_run[0])
    assert result == straight_run[1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["22", "44"]  # both kept


def test_ctrl_c_mid_epoch_saves_and_resume_is_bitwise_exact(straight_run, tmp_path):
    command = [sys.executable, "-m", "jaxkd.train", "--config", "configs/demo.py:teacher",
               "--workdir", str(tmp_path)] + SMALL
    # SIGINT as in an interactive shell, whatever this process inherited (CI runs the suite as a background job)
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):  # the first log, at step 5
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "SIGINT: saved a checkpoint at step" in out and "Traceback" not in err
    saved_step = int(out.split("saved a checkpoint at step ")[1].split(";")[0])
    assert 5 <= saved_step < 22  # mid-epoch 1
    assert not (tmp_path / "model").exists()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resumed from {tmp_path / 'checkpoints'} at step {saved_step}" in result.stdout
    assert_bitwise_equal(final_params(tmp_path), final_params(straight_run[0]))
    # the straight run's rows in their order, and the partial window logged at the stop (unless it ended one)
    straight = logged_steps(straight_run[0])
    partial = [(saved_step, "train")] if saved_step % 5 else []
    assert logged_steps(tmp_path) == ([row for row in straight if row[0] < saved_step] + partial
                                      + [row for row in straight if row[0] >= saved_step])


def test_a_stop_during_an_epochs_last_step_evaluates_that_epoch_before_it_stops(straight_run, tmp_path,
                                                                                 monkeypatch):
    """The checkpoint at an epoch's end follows that epoch's evaluation (resuming there would not run it); a
    stop during the run's last step lets the run finish."""
    stop_during_call(monkeypatch, 22)  # epoch 1's last step
    with pytest.raises(SystemExit) as stopped:
        train_and_evaluate(small_config(), tmp_path)
    assert stopped.value.code == 143
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["22"]
    assert (22, "eval") in logged_steps(tmp_path)
    monkeypatch.undo()
    stop_during_call(monkeypatch, 22)  # the resumed run's 22nd call: the run's last step
    result = train_and_evaluate(small_config(), tmp_path)
    assert result["step"] == 44 and (tmp_path / "model").exists()
    assert logged_steps(tmp_path) == logged_steps(straight_run[0])  # both epochs evaluated, every row once
    assert_bitwise_equal(final_params(tmp_path), final_params(straight_run[0]))


def test_sigterm_and_ctrl_c_stop_the_loop_with_their_exit_statuses_and_a_second_ctrl_c_interrupts(capsys):
    """The loop's decision (the Ctrl-C test above runs it end to end): SIGTERM and SIGINT each request a stop
    with the conventional status, and say at once what happens next; a second Ctrl-C interrupts at once
    (outside a checkpoint's write: test_ctrl_c_twice_waits_for_the_checkpoint_write_with_one_line). A SIGINT
    the process ignores (a background job, as CI runs the suite) stays ignored."""
    import os

    from jaxkd.io.stop_request import StopRequest

    started_with = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in an interactive shell
    try:
        for signum, status in [(signal.SIGTERM, 143), (signal.SIGINT, 130)]:
            stop = StopRequest()
            try:
                assert not stop.before_dispatch()
                os.kill(os.getpid(), signum)
                time.sleep(0.01)  # the handler runs between two bytecodes of this thread
                assert stop.before_dispatch() and stop.exit_status == status
                assert f"{signal.Signals(signum).name}: stopping: the current step finishes first" in capsys.readouterr().err
                if signum == signal.SIGINT:
                    with pytest.raises(KeyboardInterrupt):
                        os.kill(os.getpid(), signum)
                        time.sleep(1)
            finally:
                stop.restore()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop = StopRequest()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        stop.restore()
    finally:
        signal.signal(signal.SIGINT, started_with)


def test_ctrl_c_twice_waits_for_the_checkpoint_write_with_one_line(tmp_path, capsys, monkeypatch):
    """Ctrl-C during host call 8, and again while Orbax writes that stop's checkpoint (asynchronously): the first
    says "saving", the second one line, and the write completes ("saved" only then): exit 130, no traceback, no
    `-tmp` folder, and step 8 is the checkpoint a resume starts from."""
    import os

    from jaxkd.io.run_checkpoint import RunCheckpoints
    from jaxkd.io.stop_request import StopRequest

    real_before_dispatch, real_wait = StopRequest.before_dispatch, RunCheckpoints.wait_until_saved
    calls, during_write = {"count": 0}, []

    def before_dispatch(self):
        dispatch = real_before_dispatch(self)
        calls["count"] += 1
        if calls["count"] == 8:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here
        return dispatch

    def wait_until_saved(self):
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, while the save is in flight
        time.sleep(0.05)
        during_write.append(capsys.readouterr())
        real_wait(self)

    monkeypatch.setattr(StopRequest, "before_dispatch", before_dispatch)
    monkeypatch.setattr(RunCheckpoints, "wait_until_saved", wait_until_saved)
    started_with = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in an interactive shell
    try:
        with pytest.raises(SystemExit) as stopped:
            main(["train", "--config", str(REPO / "configs/demo.py:teacher"), "--workdir", str(tmp_path)] + SMALL)
    finally:
        signal.signal(signal.SIGINT, started_with)
    after = capsys.readouterr()
    assert stopped.value.code == 130
    [during] = during_write
    assert "SIGINT: saving a checkpoint at step 8..." in during.out and "saved" not in during.out
    assert "SIGINT again: waiting for a checkpoint at step 8 to be written" in during.err
    assert "SIGINT: saved a checkpoint at step 8; run the same command to resume" in after.out
    assert "Traceback" not in during.err + after.err
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["8"]
    checkpoints = RunCheckpoints(tmp_path, 3)
    assert checkpoints.latest_step() == 8
    checkpoints.close()


def test_a_second_run_on_a_live_workdir_is_one_line_and_a_dead_runs_lock_is_taken_over(tmp_path, capsys):
    from jaxkd.io.workdir import WorkdirLock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from jaxkd.io.workdir import WorkdirLock; lock = WorkdirLock(Path(sys.argv[1])); lock.acquire(); "
                               "print('locked', flush=True); time.sleep(120)", str(tmp_path)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        start = time.perf_counter()
        status = main(["train", "--config", str(REPO / "configs" / "demo.py") + ":teacher", "--workdir",
                       str(tmp_path)] + SMALL)
        seconds = time.perf_counter() - start
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1, err
        assert f"a run is live in it (pid {holder.pid} on " in err
        assert seconds < 10, seconds  # refused before the data and the models load
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # nothing written
        (tmp_path / ".lock").unlink()  # deleting the file does not steal the lock from the live holder
        with pytest.raises(UserError, match=r"a run is live in it \(another process\)"):
            WorkdirLock(tmp_path).acquire()
        assert list(tmp_path.iterdir()) == []
    finally:
        holder.kill()
        holder.wait()
    lock = WorkdirLock(tmp_path)  # the holder died; its lock file is still there
    lock.acquire()
    assert f"pid {__import__('os').getpid()} on" in (tmp_path / ".lock").read_text()
    lock.release()


def test_a_resumed_log_drops_what_was_logged_after_its_checkpoint(tmp_path):
    from tensorboardX.proto.event_pb2 import Event

    from jaxkd.io.metric_log import MetricLog

    log = MetricLog(tmp_path)
    for step in (0, 5, 10, 15):
        log.write(step, "train", {"loss": float(step)})
    log.close()
    MetricLog(tmp_path, resume_step=10).close()
    assert logged_steps(tmp_path) == [(0, "train"), (5, "train"), (10, "train")]

    def events(path):  # TFRecord framing: length (8 bytes), its CRC (4), the record, its CRC (4)
        data, out = path.read_bytes(), []
        while data:
            length = int.from_bytes(data[:8], "little")
            out.append(Event.FromString(data[12:12 + length]))
            data = data[12 + length + 4:]
        return out

    newest = max((tmp_path / "tensorboard").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    purges = [e.step for e in events(newest) if e.HasField("session_log") and e.session_log.status == 1]
    assert purges == [11]  # TensorBoard hides the older files' events from step 11 on
    MetricLog(tmp_path, resume_step=None).close()  # a run started anew (no checkpoint) keeps no row
    assert logged_steps(tmp_path) == []


def test_workdir_holds_config_metrics_tensorboard_and_exports(straight_run):
    workdir, result = straight_run
    assert json.loads((workdir / "config.json").read_text())["model"] == "resnet8"
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2] and evals[-1]["top1"] == pytest.approx(result["last_top1"])
    assert train[0]["step"] == 5 and {"loss", "ce", "accuracy", "lr", "images_per_s"} <= set(train[0])
    assert any(p.name.startswith("events.out.tfevents") for p in (workdir / "tensorboard").iterdir())
    # student.pth loads strictly into the seed's PyTorch model and predicts like the JAX model.
    state_dict = torch.load(workdir / "student.pth", weights_only=True)
    torch_model = get_torch_model("resnet8", 10)
    torch_model.load_state_dict(state_dict, strict=True)
    assert int(state_dict["finalact.0.num_batches_tracked"]) == 44


@pytest.mark.parametrize("override, message", [
    ("--config.model=resnet110", "unknown model 'resnet110'"),
    ("--config.method=distill_everything", "--config.method=distill_everything: must be one of none, kd, fitnet"),
    ("--config.optimiser.lr=0.1", 'Did you mean "optimizer" instead of "optimiser"'),
    ("--config.optimizer.lrr=0.1", 'Did you mean "lr" instead of "lrr"'),
    ("--config.lr=0.1", "the config has no key 'lr' (--config.lr); did you mean --config.optimizer.lr?"),
    ("--config.data.bogus.x=1", "the config has no key 'bogus' (--config.data.bogus.x)"),
    ("--config.epochs=abc", "flag --config.epochs=abc: invalid literal for int()"),
    ("--config.method=kd", "method 'kd' needs a teacher"),
    ("--config.teacher.checkpoint=/nonexistent/wrn40_2.pth",
     "--config.teacher.checkpoint /nonexistent/wrn40_2.pth: no such file or directory"),
    # the teacher is checked before the data: here the data is missing too
    ("--config.teacher.checkpoint=/nonexistent/t.pth --config.data.source=cifar100-python "
     "--config.data.data_dir=/nonexistent --config.data.download=False", "/nonexistent/t.pth: no such file"),
    ("--config.optimizer.lr=-0.1", "--config.optimizer.lr=-0.1: must be a number > 0"),
    ("--config.optimizer.momentum=1.5", "--config.optimizer.momentum=1.5: must be a number in [0, 1)"),
    ("--config.optimizer.lr_scaling=sqrt", "--config.optimizer.lr_scaling=sqrt: must be one of none, linear"),
    ("--num_processes=2", "a multi-process run needs the coordinator address"),
    ("--config.dtype=float16", "--config.dtype=float16: must be one of float32, bfloat16"),
    ("--config.steps_per_dispatch=-1", "--config.steps_per_dispatch=-1: must be an integer >= 0"),
    ("--config.log_every_steps=0", "--config.log_every_steps=0: must be an integer >= 1"),
])
def test_bad_config_is_one_line_before_any_compile(override, message, tmp_path, capsys):
    compiled = []

    def on_event(event, duration, **kwargs):
        # a compile, or a program taken from the persistent compilation cache (tests/conftest.py turns it on)
        if event in ("/jax/core/compile/backend_compile_duration", "/jax/compilation_cache/cache_retrieval_time_sec"):
            compiled.append(duration)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    argv = ["train", "--config", str(REPO / "configs/demo.py"), "--workdir", str(tmp_path / "run"), *override.split()]
    if "teacher.checkpoint" in override:
        argv.append("--config.method=kd")
    try:
        assert main(argv) == 2
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not compiled and not (tmp_path / "run").exists()


@pytest.mark.parametrize("workdir, message", [
    ("notes.txt", "notes.txt: exists and is not a directory"),
    ("notes.txt/run", "notes.txt/run: lies under {tmp}/notes.txt, which exists and is not a directory"),
])
def test_a_workdir_that_is_a_file_is_one_line_before_any_load(workdir, message, tmp_path, capsys, monkeypatch):
    def no_build(config):
        raise AssertionError("the data and models were loaded before the workdir was checked")

    monkeypatch.setattr(loop, "build", no_build)
    (tmp_path / "notes.txt").write_text("kept\n")
    argv = ["train", "--config", str(REPO / "configs/demo.py"), "--workdir", str(tmp_path / workdir)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --workdir ") and "\n" not in err and message.format(tmp=tmp_path) in err, err
    assert (tmp_path / "notes.txt").read_text() == "kept\n" and sorted(tmp_path.iterdir()) == [tmp_path / "notes.txt"]


def test_a_workdir_resumes_only_the_same_run_up_to_intervals_and_rounding_settings(tmp_path):
    from configs import crd_wrn
    from jaxkd.io.workdir import save_config

    save_config(crd_wrn.get_config(), tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 50, "kind": "train", "loss": 4.0}\n')  # the run started
    same_run = crd_wrn.get_config()
    same_run.epochs, same_run.log_every_steps, same_run.steps_per_dispatch = 300, 50, 4
    same_run.crd.chunk_elements = 1 << 22
    save_config(same_run, tmp_path)  # accepted, and written
    assert json.loads((tmp_path / "config.json").read_text())["crd"]["chunk_elements"] == 1 << 22
    other_run = crd_wrn.get_config()
    other_run.crd.nce_k, other_run.optimizer.lr = 4096, 0.1
    with pytest.raises(UserError, match=r"holds a run with another config \(differs in: crd, optimizer\)"):
        save_config(other_run, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["crd"]["nce_k"] == 16384  # kept
    # A config.json that is not one (edited by hand, another program's) is refused, and kept.
    for text in ("{not json", "[1, 2]", "\xff"):
        (tmp_path / "config.json").write_text(text, encoding="latin-1")
        with pytest.raises(UserError, match=r"config.json: not a run config jaxkd can read \(a JSON object\)"):
            save_config(same_run, tmp_path)
        assert (tmp_path / "config.json").read_text(encoding="latin-1") == text


def test_lowering_epochs_on_a_finished_run_is_refused_and_rewrites_nothing(straight_run, tmp_path, capsys):
    """A finished 2-epoch run re-run with --config.epochs=1: one line, exit 2, every file as it was (config.json
    would otherwise describe a 1-epoch run beside the 2-epoch model). Raising epochs extends a run:
    test_resume_after_an_epoch_is_bitwise_exact."""
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(straight_run[0], workdir)
    def files():  # but the lock, which names the last command
        return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in workdir.rglob("*") if p.is_file() and p.name != ".lock"}

    before = files()
    argv = ["train", "--config", str(REPO / "configs/demo.py:teacher"), "--workdir", str(workdir)]
    assert main(argv + [arg.replace("epochs=2", "epochs=1") for arg in SMALL]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "holds a run of 2 epochs trained to step 44 (epoch 2); --config.epochs=1 would end it before" in err
    assert files() == before


def test_a_workdir_whose_run_never_started_takes_the_corrected_config(tmp_path, capsys):
    """A run that ended on a user error before its first checkpoint and log step (config.json and the teacher's
    row written) does not hold its workdir: the corrected command is accepted, with one line saying so. Once a
    train row or a checkpoint exists the workdir holds the run."""
    from jaxkd.io.workdir import save_config

    failed = small_config()
    failed.eval_batch_size = 7
    save_config(failed, tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "kind": "teacher", "top1": 50.0}\n')
    (tmp_path / "checkpoints").mkdir()  # Orbax creates it empty
    corrected = small_config()
    save_config(corrected, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["eval_batch_size"] == corrected.eval_batch_size
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "stopped before its first checkpoint and log step; starting it anew" in out

    with open(tmp_path / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 5, "kind": "train", "loss": 2.0}\n')
    with pytest.raises(UserError, match=r"holds a run with another config \(differs in: eval_batch_size\)"):
        save_config(failed, tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "checkpoints" / "22.orbax-checkpoint-tmp-1").mkdir()  # a save was attempted
    with pytest.raises(UserError, match=r"differs in: eval_batch_size"):
        save_config(failed, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["eval_batch_size"] == corrected.eval_batch_size


def test_a_run_started_before_a_config_key_existed_still_resumes(tmp_path):
    """A config.json without `loss.logit_standardization` (written before the key was added) is the same run as
    one with it False; with it True, another run."""
    from configs import kd_wrn
    from jaxkd.io.workdir import save_config

    save_config(kd_wrn.get_config(), tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 50, "kind": "train", "loss": 4.0}\n')  # the run started
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["loss"]["logit_standardization"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    save_config(kd_wrn.get_config(), tmp_path)  # accepted
    standardized = kd_wrn.get_config()
    standardized.loss.logit_standardization = True
    with pytest.raises(UserError, match=r"differs in: loss"):
        save_config(standardized, tmp_path)


def test_a_run_saved_with_pytorch_kds_values_spelled_seed_still_resumes(tmp_path):
    """pytorch-kd's recipe values were once spelled "seed" (data.normalization, optimizer.lr_decay_timing): a
    started run's config.json holding them is the same run as today's "pytorch_kd" (workdir.RENAMED_VALUES); with
    RepDistiller's values instead, another run."""
    from configs import demo
    from jaxkd.io.workdir import save_config

    config = demo.get_config("teacher")
    assert (config.data.normalization, config.optimizer.lr_decay_timing) == ("pytorch_kd", "pytorch_kd")
    save_config(config, tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 50, "kind": "train", "loss": 4.0}\n')  # the run started
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["data"]["normalization"] = saved["optimizer"]["lr_decay_timing"] = "seed"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    save_config(config, tmp_path)  # accepted
    config.data.normalization = config.optimizer.lr_decay_timing = "repdistiller"
    with pytest.raises(UserError, match=r"differs in: data, optimizer\)"):
        save_config(config, tmp_path)


# jaxkd/config/default.py's keys before `loss.logit_standardization` and `wandb` were added: runs may have started
# with a config.json holding just these
KEYS_OF_STARTED_RUNS = {
    "batch_size", "checkpoint_every_epochs", "data.data_dir", "data.download", "data.drop_last", "data.normalization",
    "data.padding", "data.source", "dtype", "epochs", "eval_batch_size", "eval_every_epochs", "keep_checkpoints",
    "log_every_steps", "loss.alpha", "loss.beta", "loss.gamma", "loss.kd_temperature", "method", "model",
    "optimizer.lr", "optimizer.lr_decay_epochs", "optimizer.lr_decay_rate", "optimizer.lr_decay_timing",
    "optimizer.lr_reference_batch", "optimizer.lr_scaling", "optimizer.momentum", "optimizer.nesterov",
    "optimizer.weight_decay", "progress_bar", "data.saliencymix", "data.saliencymix_per_example",
    "data.saliencymix_prob", "seed", "steps_per_dispatch", "teacher.arch", "teacher.checkpoint"}
# (SaliencyMix's keys sat at the top level in those runs: workdir.MOVED_KEYS, tests/test_train_saliencymix.py)


def test_a_key_added_to_the_default_config_leaves_started_runs_resumable(tmp_path):
    """Every default key newer than KEYS_OF_STARTED_RUNS: a config.json without it (a run started before it
    existed) must still be accepted as the same run, i.e. the key is in jaxkd/io/workdir.py's ADDED_KEYS (with the
    value the older runs behave as) or RESUME_MAY_CHANGE; else upgrading jaxkd would strand every started run."""
    from configs import default
    from jaxkd.io.workdir import save_config

    def flattened(tree, prefix=""):
        for name, value in tree.items():
            yield from flattened(value, f"{prefix}{name}.") if isinstance(value, dict) else [prefix + name]

    config = default.get_config()
    added = sorted(set(flattened(config.to_dict())) - KEYS_OF_STARTED_RUNS)
    assert {"loss.logit_standardization", "wandb.mode"} <= set(added)
    save_config(config, tmp_path)
    for key in added:
        saved = json.loads((tmp_path / "config.json").read_text())
        *parents, name = key.split(".")
        holder = saved
        for parent in parents:
            holder = holder[parent]
        del holder[name]
        older = tmp_path / key
        older.mkdir()
        (older / "config.json").write_text(json.dumps(saved))
        save_config(config, older)  # accepted: raises "differs in: ..." otherwise


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    train_and_evaluate(small_config(epochs=1), tmp_path)
    checkpoint = tmp_path / "checkpoints" / "22"
    before = {p.relative_to(checkpoint): p.read_bytes() for p in checkpoint.rglob("*") if p.is_file()}

    monkeypatch.setattr("jaxkd.engine.step.cross_entropy", lambda logits, labels: jax.numpy.nan * logits.sum())
    with pytest.raises(UserError, match=r"the loss became nan before step 25; stopping \(the last good "
                                        r"checkpoint \(step 22\) is kept: running the same command resumes"):
        train_and_evaluate(small_config(epochs=2), tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["22"]
    after = {p.relative_to(checkpoint): p.read_bytes() for p in checkpoint.rglob("*") if p.is_file()}
    assert after == before


def test_teacher_of_another_architecture_is_refused_before_any_compile(tmp_path, capsys):
    torch.save(get_torch_model("resnet8", 10).state_dict(), tmp_path / "teacher.pth")
    argv = ["train", "--config", str(REPO / "configs/demo.py:student"), "--workdir", str(tmp_path / "run"),
            f"--config.teacher.checkpoint={tmp_path / 'teacher.pth'}", "--config.teacher.arch=wideresnet40_2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "does not fit wideresnet40_2 (its shapes fit resnet8)" in err and "\n" not in err
    assert err.endswith("pass --config.teacher.arch='' to take the architecture from the file")
    assert not (tmp_path / "run").exists()


def test_an_unreadable_or_another_runs_config_json_is_refused_before_anything_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loop, "build", lambda config: pytest.fail("the data and models were loaded first"))
    argv = ["train", "--config", str(REPO / "configs/demo.py:teacher"), "--workdir", str(tmp_path)]
    for text, message in [("{not json", "config.json: not a run config jaxkd can read"),
                          ('{"model": "resnet20", "seed": 5}', "holds a run with another config (differs in: ")]:
        (tmp_path / "config.json").write_text(text)
        (tmp_path / "metrics.jsonl").write_text('{"step": 5, "kind": "train", "loss": 2.0}\n')  # a started run
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
        assert (tmp_path / "config.json").read_text() == text


def test_a_teacher_is_checked_before_the_data_loads_and_its_classes_against_the_datas(tmp_path, monkeypatch):
    """A teacher file that does not fit is refused without loading the data (a slow refusal before: scikit-learn's
    import and the digits); one that fits but has other classes than the data, once the data is there."""
    from jaxkd.data import Split

    torch.save(get_torch_model("resnet8", 10).state_dict(), tmp_path / "teacher.pth")
    config = demo.get_config("student")
    config.teacher.checkpoint, config.teacher.arch = str(tmp_path / "teacher.pth"), "wideresnet40_2"
    monkeypatch.setattr("jaxkd.engine.setup.load_split",
                        lambda *args, **kwargs: pytest.fail("the data was loaded first"))
    with pytest.raises(UserError, match="does not fit wideresnet40_2"):
        build(config)
    config.teacher.arch = ""
    hundred = Split(np.zeros((4, 32, 32, 3), np.uint8), np.arange(4, dtype=np.int32), np.arange(4, dtype=np.int32), 100)
    with pytest.raises(UserError, match=r"teacher .*teacher.pth has 10 classes, the dataset 100"):
        build(config, data=(hundred, hundred))


def test_bfloat16_compute_keeps_float32_parameters_statistics_and_loss():
    from jaxkd.data import epoch_permutation
    from jaxkd.engine.mesh import replicated

    losses, hlo = {}, {}
    for dtype in ("float32", "bfloat16"):
        config = small_config()
        config.dtype = dtype
        setup = build(config, jax.devices()[:1])
        whole = replicated(setup.mesh)
        state = jax.device_put(create_train_state(setup), whole)
        data = jax.device_put((setup.train.images, setup.train.labels, setup.train.index), whole)
        permutation = epoch_permutation(jax.random.PRNGKey(0), 0, num_examples=len(setup.train))
        step = make_train_step(setup)
        arguments = (state, zero_sums(setup), None, *data, permutation)
        hlo[dtype] = step.lower(*arguments).as_text()
        state, sums = step(*arguments)
        losses[dtype] = float(sums["loss"])
        assert {leaf.dtype for leaf in jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
                if jax.numpy.issubdtype(leaf.dtype, jax.numpy.floating)} == {jax.numpy.dtype("float32")}
    # The convolutions run in bfloat16 only when asked; the loss is close to float32's.
    assert "convolution" in hlo["bfloat16"] and "bf16" in hlo["bfloat16"] and "bf16" not in hlo["float32"]
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=2e-2)
    assert losses["bfloat16"] != losses["float32"]


def test_dispatch_plan_runs_whole_chunks_and_stops_at_every_fetch_and_epoch_end():
    from jaxkd.engine.dispatch import dispatch_plan

    spe, log_every, chunk = 22, 5, 4  # small_config's epoch, log interval, and a chunk that divides neither
    stops = set(range(log_every, 2 * spe, log_every)) | {spe, 2 * spe}  # fetches: every 5 steps, epoch ends
    step, sizes, reached = 0, [], []
    for epoch in range(2):  # the engine plans an epoch at a time
        for size, fetch in dispatch_plan(step, (epoch + 1) * spe, spe, log_every, chunk):
            # a dispatch never crosses a fetch or an epoch's end
            assert not any(step < stop < step + size for stop in stops)
            step += size
            sizes.append(size)
            assert fetch == (step in stops)
            if fetch:
                reached.append(step)
    assert step == 2 * spe and reached == sorted(stops)  # the loop regains control at each of them
    # a chunk where 4 steps fit before the stop, single steps for what is left: 5 = 4 + 1; 20..22 (epoch end),
    # 22..25 and 40..44 (the run's end) as the fetches fall
    assert sizes == [4, 1] * 4 + [1, 1] + [1, 1, 1] + [4, 1] * 3 + [4]
    # resumed mid-epoch (step 13), and run to an end that is not a fetch (the bench's warm-up)
    assert list(dispatch_plan(13, 22, spe, log_every, chunk)) == [(1, False), (1, True), (4, False), (1, True),
                                                                   (1, False), (1, True)]
    assert list(dispatch_plan(0, 9, 9, 9, chunk)) == [(4, False), (4, False), (1, True)]


def test_automatic_steps_per_dispatch_is_one_on_cpu_and_whole_chunks_between_fetches_elsewhere():
    from jaxkd.engine.dispatch import AUTO_STEPS_PER_DISPATCH, steps_per_dispatch

    config = demo.get_config()
    assert config.steps_per_dispatch == 0  # the default: automatic
    for log_every, on_gpu in [(100, AUTO_STEPS_PER_DISPATCH), (30, 15), (7, 7), (1, 1)]:
        config.log_every_steps = log_every
        assert steps_per_dispatch(config, "cpu") == 1
        assert steps_per_dispatch(config, "gpu") == steps_per_dispatch(config, "tpu") == on_gpu
        assert log_every % on_gpu == 0
    config.steps_per_dispatch = 8  # a value set by hand is kept everywhere
    assert steps_per_dispatch(config, "cpu") == steps_per_dispatch(config, "gpu") == 8


@pytest.mark.parametrize("unroll", [True, False], ids=["unrolled", "loop"])
def test_a_chunk_of_steps_in_one_call_equals_single_steps_up_to_rounding(unroll):
    """steps_per_dispatch=2: one `lax.scan` call does the work of two single-step calls (same batches, keys and
    updates), unrolled (the CPU default) or as a loop (elsewhere); XLA compiles the chunk on its own, so only
    float rounding may differ."""
    from jaxkd.data import epoch_permutation
    from jaxkd.engine.mesh import replicated

    config = small_config()
    setup = build(config, jax.devices()[:1])
    whole = replicated(setup.mesh)
    data = jax.device_put((setup.train.images, setup.train.labels, setup.train.index), whole)
    permutation = jax.device_put(epoch_permutation(jax.random.PRNGKey(0), 0, num_examples=len(setup.train)), whole)
    results = {}
    for chunk, calls in ((1, 2), (2, 1), (1, 1)):
        state, sums = jax.device_put(create_train_state(setup), whole), zero_sums(setup)
        step = make_train_step(setup, chunk, unroll=unroll)
        for _ in range(calls):
            state, sums = step(state, sums, None, *data, permutation)
        results[chunk, calls] = jax.device_get((state, sums))
    (single, single_sums), (chunked, chunked_sums) = results[1, 2], results[2, 1]
    assert int(chunked.step) == int(single.step) == 2
    for name in single_sums:
        assert chunked_sums[name] == pytest.approx(single_sums[name], rel=1e-5), name
    # Each tensor's difference is tiny next to what the second step changed (a wrong batch, key or update in
    # the chunk would be of the order of that change; measured rounding: 5e-5 of it).
    after_one = results[1, 1][0]
    for tree in ("params", "batch_stats", "opt_state"):
        for a, b, one in zip(*(jax.tree.leaves(getattr(s, tree)) for s in (single, chunked, after_one))):
            assert np.max(np.abs(a - b)) <= 1e-3 * np.max(np.abs(a - one)) + 1e-7, tree


def test_chunked_run_logs_like_single_steps_and_resumes_bitwise(tmp_path, monkeypatch):
    """steps_per_dispatch=2 through the real loop (calls of 2, 2, 1 steps between fetches every 5): metrics at
    the same steps as one step per call, and a run stopped between two calls (here after the first chunk, at
    step 2) resumes to the same final weights."""
    config = small_config(epochs=1)
    config.steps_per_dispatch = 2
    straight = train_and_evaluate(config, tmp_path / "straight")
    assert straight["step"] == 22

    calls = {"count": 0}
    real_before_dispatch = StopRequest.before_dispatch

    def stop_before_the_second_call(self):  # as if SIGTERM arrived during the first call
        calls["count"] += 1
        if calls["count"] == 2:
            self._handle(signal.SIGTERM, None)
        return real_before_dispatch(self)

    monkeypatch.setattr(StopRequest, "before_dispatch", stop_before_the_second_call)
    with pytest.raises(SystemExit) as stopped:
        train_and_evaluate(config, tmp_path / "stopped")
    assert stopped.value.code == 143
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "stopped" / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    assert train_and_evaluate(config, tmp_path / "stopped")["step"] == 22
    assert_bitwise_equal(final_params(tmp_path / "stopped"), final_params(tmp_path / "straight"))

    def logged(workdir):
        return [(r["step"], r["kind"]) for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]

    # the same fetches as one step per call: every 5 steps and at the epoch's end (step 2's partial fetch on
    # stopping aside)
    expected = [(5, "train"), (10, "train"), (15, "train"), (20, "train"), (22, "train"), (22, "eval")]
    assert logged(tmp_path / "straight") == expected
    assert logged(tmp_path / "stopped") == [(2, "train")] + expected


def test_assert_bitwise_equal_fails_on_a_missing_or_extra_leaf_and_on_any_bit():
    """The resume tests' comparison: a leaf missing on either side, another dtype or shape, or one bit
    changed fails it; the same tree passes."""
    tree = {"a": np.arange(3, dtype=np.float32), "b": {"c": np.ones((2, 2), np.float32)}}
    assert_bitwise_equal(tree, jax.tree.map(np.copy, tree))
    flipped = jax.tree.map(np.copy, tree)
    flipped["b"]["c"].view(np.uint32)[1, 1] ^= 1
    for other in ({"a": tree["a"]}, {**tree, "d": np.zeros(1, np.float32)}, {**tree, "a": tree["a"][:2]},
                  {**tree, "a": tree["a"].astype(np.float64)}, flipped):
        for first, second in ((tree, other), (other, tree)):
            with pytest.raises(AssertionError):
                assert_bitwise_equal(first, second)


# One key of each family that defines a run (its value here differs from configs/crd_wrn.py's), and every key
# a resumed run may change (jaxkd/io/workdir.py's RESUME_MAY_CHANGE).
REFUSED_ON_RESUME = [("seed", 1), ("model", "resnet8"), ("method", "kd"), ("crd.nce_k", 4096), ("crd.nce_t", 0.1),
                     ("data.source", "digits"), ("data.padding", "reflect"), ("batch_size", 128),
                     ("teacher.checkpoint", "other.pth"), ("teacher.arch", "resnet56"), ("optimizer.lr", 0.1),
                     ("optimizer.nesterov", True), ("optimizer.momentum", 0.5), ("optimizer.weight_decay", 0.0),
                     ("optimizer.lr_decay_epochs", (100,)), ("loss.alpha", 0.5), ("loss.kd_temperature", 2.0),
                     ("data.saliencymix", True), ("dtype", "bfloat16")]
ALLOWED_ON_RESUME = [("log_every_steps", 7), ("eval_every_epochs", 3), ("checkpoint_every_epochs", 5),
                     ("keep_checkpoints", 9), ("progress_bar", False), ("epochs", 300), ("steps_per_dispatch", 4),
                     ("crd.chunk_elements", 1 << 22), ("wandb.mode", "offline")]


def _started_run(workdir):
    """`workdir` holding a started configs/crd_wrn.py run (config.json and a train row); returns its config."""
    from configs import crd_wrn
    from jaxkd.io.workdir import save_config

    save_config(crd_wrn.get_config(), workdir)
    (workdir / "metrics.jsonl").write_text('{"step": 100, "kind": "train", "loss": 2.0}\n')
    return crd_wrn.get_config()


def _with(config, key, value):
    *sections, name = key.split(".")
    holder = config
    for section in sections:
        holder = holder[section]
    holder[name] = value
    return config


@pytest.mark.parametrize("key, value", REFUSED_ON_RESUME, ids=[key for key, _ in REFUSED_ON_RESUME])
def test_a_key_that_changes_the_run_is_refused_on_resume_and_config_json_is_kept(key, value, tmp_path):
    from jaxkd.io.workdir import save_config

    config = _with(_started_run(tmp_path), key, value)
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(UserError, match=rf"holds a run with another config \(differs in: {key.split('.')[0]}\)"):
        save_config(config, tmp_path)
    assert (tmp_path / "config.json").read_text() == before


@pytest.mark.parametrize("key, value", ALLOWED_ON_RESUME, ids=[key for key, _ in ALLOWED_ON_RESUME])
def test_a_key_that_does_not_change_the_run_may_change_on_resume(key, value, tmp_path):
    from jaxkd.io.workdir import save_config

    config = _with(_started_run(tmp_path), key, value)
    save_config(config, tmp_path)  # accepted, and written
    saved = json.loads((tmp_path / "config.json").read_text())
    for part in key.split("."):
        saved = saved[part]
    assert saved == value


def test_a_run_started_with_data_workers_0_resumes_with_todays_default(tmp_path):
    """Runs started before data.workers defaulted to the host's cores (-1) wrote 0 (threads) in config.json:
    today's default config resumes them (the batches do not depend on the worker count:
    tests/test_data_streaming.py). A config.json without the key: the test of ADDED_KEYS above."""
    from jaxkd.io.workdir import save_config

    config = _started_run(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["data"]["workers"] == config.data.workers == -1
    saved["data"]["workers"] = 0
    (tmp_path / "config.json").write_text(json.dumps(saved))
    save_config(config, tmp_path)  # accepted: raises "holds a run with another config" otherwise


def _rows(workdir) -> list[dict]:
    """metrics.jsonl's rows without their timing (images_per_s): what a resumed run must log as the straight one."""
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
            for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _damage(checkpoint: Path, how: str) -> None:
    """Damages the checkpoint folder `checkpoint` as a disk or a careless copy might."""
    from jaxkd.io.run_checkpoint import MANIFEST

    arrays = sorted((p for p in (checkpoint / "state").rglob("*") if p.is_file() and p.name != MANIFEST),
                    key=lambda p: p.stat().st_size)
    data = bytearray(arrays[-1].read_bytes())  # the largest file: the parameters' bytes
    if how == "flipped_byte":
        data[len(data) // 2] ^= 0x10
        arrays[-1].write_bytes(bytes(data))  # same size
    elif how == "truncated":
        arrays[-1].write_bytes(bytes(data[: len(data) // 2]))
    elif how == "missing_metadata":
        (checkpoint / "state" / "_METADATA").unlink()
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["truncated", "missing_metadata"])
def test_a_truncated_or_incomplete_newest_checkpoint_is_one_line_and_set_aside(how, straight_run, tmp_path,
                                                                               capsys):
    """The straight run's workdir with step 44 truncated or without its _METADATA: the checkpoints report step
    22 as the newest, with one line, and step 44 is set aside (what follows is the flipped byte's test below)."""
    from jaxkd.io.run_checkpoint import RunCheckpoints

    workdir = tmp_path / "run"
    shutil.copytree(straight_run[0], workdir)
    _damage(workdir / "checkpoints" / "44", how)
    capsys.readouterr()
    checkpoints = RunCheckpoints(workdir, keep=2)
    try:
        assert checkpoints.latest_step() == 22
    finally:
        checkpoints.close()
    out = capsys.readouterr().out
    problem = "state/_METADATA is missing" if how == "missing_metadata" else " bytes, "
    assert out.count("\n") == 1 and "(step 44: " in out and problem in out and "resuming from step 22" in out, out
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["22"]
    assert sorted(p.name for p in (workdir / "checkpoints.damaged").iterdir()) == ["44"]


def test_a_damaged_newest_checkpoint_is_one_line_and_the_run_resumes_from_the_previous_one(straight_run, tmp_path,
                                                                                            capsys):
    """The straight run's workdir (checkpoints 22 and 44 kept) with a byte of step 44's parameters flipped (the
    same size): one line, step 44 set aside, the run resumes from step 22, redoes epoch 2 and ends as the
    straight run: the same weights bit for bit, the same rows once with the same values (evaluations and best
    included), the same result."""
    workdir = tmp_path / "run"
    shutil.copytree(straight_run[0], workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["22", "44"]
    _damage(workdir / "checkpoints" / "44", "flipped_byte")
    capsys.readouterr()
    result = train_and_evaluate(small_config(), workdir)
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "damaged checkpoint" in line]
    assert len(warnings) == 1 and "(step 44: " in warnings[0] and "resuming from step 22" in warnings[0], out
    assert f"resumed from {workdir / 'checkpoints'} at step 22 (epoch 2 of 2)" in out
    # epoch 2's line, with the best accuracy and its epoch as restored from step 22's checkpoint
    epoch_2 = [line for line in out.splitlines() if line.startswith("epoch 2/2: ")]
    assert epoch_2 == [line for line in (straight_run[0] / "stdout.txt").read_text().splitlines()
                       if line.startswith("epoch 2/2: ")]
    assert result == straight_run[1]
    assert_bitwise_equal(final_params(workdir), final_params(straight_run[0]))
    assert _rows(workdir) == _rows(straight_run[0])
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["22", "44"]  # 44 saved anew
    assert sorted(p.name for p in (workdir / "checkpoints.damaged").iterdir()) == ["44"]


def test_with_every_checkpoint_damaged_the_run_is_one_line_and_changes_nothing(straight_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(straight_run[0], workdir)
    _damage(workdir / "checkpoints" / "44", "flipped_byte")
    _damage(workdir / "checkpoints" / "22", "truncated")
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and p.name != ".lock"}
    config = small_config()
    config.progress_bar = True  # the straight run's config, so that config.json stays as it is
    with pytest.raises(UserError) as refused:
        train_and_evaluate(config, workdir)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{workdir / 'checkpoints'}: no intact checkpoint (step 44: "), \
        message
    assert "; step 22: " in message and "nothing was changed" in message
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_a_finished_run_resumes_from_its_newest_checkpoint_with_its_best(straight_run, tmp_path, capsys):
    """Re-running a finished run (checkpoints 22 and 44 kept) restores the newest, with the best accuracy and
    its epoch: nothing is trained or logged again, and the export reports the straight run's best."""
    workdir = tmp_path / "run"
    shutil.copytree(straight_run[0], workdir)
    rows = _rows(workdir)
    capsys.readouterr()
    result = train_and_evaluate(small_config(), workdir)
    out = capsys.readouterr().out
    assert f"resumed from {workdir / 'checkpoints'} at step 44 (training already complete)" in out
    assert result == straight_run[1] and _rows(workdir) == rows
    evals = [row for row in rows if row["kind"] == "eval"]
    best = max(evals, key=lambda row: row["top1"])
    assert result["best_top1"] == best["top1"] == evals[-1]["best_top1"]
    from jaxkd.io.model_checkpoint import load_model_checkpoint

    assert load_model_checkpoint(workdir / "model")[1]["best_top1"] == best["top1"]
    assert f"(best {best['top1']:.2f})" in out


def test_a_workdir_that_lost_its_checkpoints_or_its_config_is_refused_and_kept(straight_run, tmp_path):
    """A run's workdir (the straight run's, copied) without checkpoints/ (its .checkpointed says it had some), or
    with its checkpoints but without config.json: one line each, nothing written; a run that stopped before its
    first checkpoint (no .checkpointed) or while writing it (a temporary folder) starts anew as before."""
    from jaxkd.io.workdir import save_config

    config = small_config()
    config.progress_bar = True  # the straight run's config
    lost_checkpoints, lost_config = tmp_path / "lost_checkpoints", tmp_path / "lost_config"
    for workdir in (lost_checkpoints, lost_config):
        shutil.copytree(straight_run[0], workdir)
    assert (lost_checkpoints / ".checkpointed").exists()  # written by the straight run's first checkpoint
    shutil.rmtree(lost_checkpoints / "checkpoints")
    before = (lost_checkpoints / "config.json").read_bytes()
    with pytest.raises(UserError, match=r"lost_checkpoints: its run's checkpoints are gone \(it had saved some: "
                                        r"\.checkpointed; .*\): restore them from a copy, or delete .*lost_checkp"):
        save_config(config, lost_checkpoints)
    assert (lost_checkpoints / "config.json").read_bytes() == before
    (lost_config / "config.json").unlink()
    with pytest.raises(UserError, match=r"lost_config holds checkpoints \(checkpoints/22, checkpoints/44\) but no "
                                        r"config.json, which names their run's config: restore config.json"):
        save_config(config, lost_config)
    assert not (lost_config / "config.json").exists()

    (lost_checkpoints / "checkpoints").mkdir()
    (lost_checkpoints / "checkpoints" / "22.orbax-checkpoint-tmp").mkdir()  # killed during its first save
    save_config(config, lost_checkpoints)
    (lost_checkpoints / ".checkpointed").unlink()  # killed before its first checkpoint
    shutil.rmtree(lost_checkpoints / "checkpoints")
    save_config(config, lost_checkpoints)


def test_a_damaged_metrics_line_or_a_cut_log_is_reported_and_no_later_row_is_dropped(tmp_path, capsys):
    """Resuming at step 15: a damaged line inside metrics.jsonl is reported and dropped, the rows after it kept;
    a log cut before step 15 (its rows up to the checkpoint lost) is reported; a killed write's partial last
    line after the checkpoint's row is dropped silently, as always."""
    from jaxkd.io.metric_log import MetricLog

    rows = [json.dumps({"step": step, "kind": kind, "top1": 1.0}) for step, kind in
            [(0, "train"), (5, "train"), (10, "train"), (10, "eval"), (15, "train")]]
    cases = {
        "damaged_line": ("\n".join(rows[:1] + [rows[1][:12]] + rows[2:]) + "\n",
                         "line 2 not a complete row (dropped, the rows after kept)", [0, 10, 10, 15]),
        "cut": ("\n".join(rows[:3]) + "\n" + rows[3][:20], "no row at step 15, the checkpoint this run resumes "
                "from: the rows after step 10 up to it are lost", [0, 5, 10]),
        "killed_write": ("\n".join(rows) + '\n{"step": 20, "kind": "train"}\n{"step": 25, "ki', None,
                         [0, 5, 10, 10, 15]),
    }
    for name, (text, warning, kept) in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(text)
        MetricLog(tmp_path / name, resume_step=15).close()
        out = capsys.readouterr().out
        if warning is None:
            assert out == "", name
        else:
            assert out.count("\n") == 1 and out.startswith("warning: metrics.jsonl is damaged: ") and warning in out, \
                (name, out)
        assert [step for step, _ in logged_steps(tmp_path / name)] == kept, name


def test_init_checkpoints_are_verified_and_a_missing_manifest_counts_as_damage_once_manifests_are_due(tmp_path,
                                                                                                        capsys):
    """The init stage's checkpoints (`init_checkpoints`) carry manifests like training's: a checkpoint whose
    manifest was deleted is damaged once the workdir's .checkpointed says manifests are written; a workdir from
    before manifests (no .checkpointed) restores its newest checkpoint unverified."""
    from jaxkd.engine.train_state import TrainState
    from jaxkd.io.run_checkpoint import MANIFEST, RunCheckpoints

    def state(step):
        return TrainState(step=jax.numpy.asarray(step, jax.numpy.int32), params={"w": jax.numpy.full(4, step * 1.0)},
                          batch_stats={}, opt_state={}, method_state={}, rng=jax.random.PRNGKey(0))

    checkpoints = RunCheckpoints(tmp_path, 3, "init_checkpoints")
    assert checkpoints.latest_step() is None
    for step in (1, 2, 3):
        checkpoints.save(state(step), {})
    checkpoints.close()
    assert all((tmp_path / "init_checkpoints" / str(step) / MANIFEST).exists() for step in (1, 2, 3))
    assert (tmp_path / ".checkpointed").exists()
    (tmp_path / "init_checkpoints" / "3" / MANIFEST).unlink()
    capsys.readouterr()
    checkpoints = RunCheckpoints(tmp_path, 3, "init_checkpoints")
    try:
        assert checkpoints.latest_step() == 2
        restored, _ = checkpoints.restore(state(0))
    finally:
        checkpoints.close()
    assert int(restored.step) == 2 and np.array_equal(restored.params["w"], np.full(4, 2.0, np.float32))
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and f"(step 3: {MANIFEST} is missing)" in out
    assert sorted(p.name for p in (tmp_path / "init_checkpoints.damaged").iterdir()) == ["3"]

    (tmp_path / ".checkpointed").unlink()  # as if written before manifests existed
    (tmp_path / "init_checkpoints" / "2" / MANIFEST).unlink()
    checkpoints = RunCheckpoints(tmp_path, 3, "init_checkpoints")
    try:
        assert checkpoints.latest_step() == 2
    finally:
        checkpoints.close()
    assert capsys.readouterr().out == ""



class FullDisk:
    """Files whose writes fail with ENOSPC, as the operating system's do, while `full` is set (by a trigger)."""

    def __init__(self):
        self.full, self.since = False, None

    def fail(self, path):
        if self.full:
            self.since = self.since or time.monotonic()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def wrap(self, file, path):
        disk = self

        class File:
            def write(self, data):
                disk.fail(path)
                return file.write(data)

            def flush(self):
                disk.fail(path)
                return file.flush()

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                file.close()

            def __getattr__(self, name):
                return getattr(file, name)

        return File()


def fill_disk_under(sink: str, workdir: Path, monkeypatch) -> FullDisk:
    """The writes of `sink` fail with ENOSPC from a chosen moment on: metrics.jsonl from the first row after the
    step-22 checkpoint, the TensorBoard events from the step-44 evaluation row, student.pth when the export begins
    (`monkeypatch.undo()` frees the space)."""
    import builtins

    import tensorboardX.record_writer

    from jaxkd.io import metric_log, safe_write

    disk = FullDisk()
    real_write, real_export = metric_log.MetricLog.write, loop.export_models
    fault_row = {"metrics.jsonl": (25, "train"), "tensorboard": (44, "eval")}.get(sink)

    def write(log, step, kind, values):
        disk.full = disk.full or (step, kind) == fault_row
        return real_write(log, step, kind, values)

    def export_models(*args, **kwargs):
        disk.full = True
        return real_export(*args, **kwargs)

    def open_failing(path, *args, **kwargs):
        return disk.wrap(builtins.open(path, *args, **kwargs), path)

    monkeypatch.setattr(metric_log.MetricLog, "write", write)
    if sink == "metrics.jsonl":
        monkeypatch.setattr(metric_log, "open", open_failing, raising=False)
    elif sink == "tensorboard":
        monkeypatch.setattr(tensorboardX.record_writer, "open", open_failing, raising=False)
    else:
        monkeypatch.setattr(loop, "export_models", export_models)
        real_os = safe_write.os
        monkeypatch.setattr(safe_write, "os", type("os", (), {
            "__getattr__": lambda self, name: getattr(real_os, name),
            "fdopen": staticmethod(lambda handle, mode: disk.wrap(real_os.fdopen(handle, mode), workdir / sink))})())
    return disk


WHAT_FAILED = {"metrics.jsonl": "the metrics", "tensorboard": "the TensorBoard events",
               "student.pth": "the state_dict", "checkpoints": "a checkpoint"}


def small_run_command(workdir) -> list[str]:
    """`python -m jaxkd.train`'s argv for the straight run's config (tests/helpers/runs.py's small_config)."""
    return ["train", "--config", str(REPO / "configs/demo.py:teacher"), "--workdir", str(workdir), *SMALL,
            "--config.data.drop_last=True"]


def assert_stopped_in_one_line(workdir, sink, capsys, kept):
    """The run stopped with one line naming the path that could not be written and why, its checkpoints `kept`."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err == f"error: {workdir / sink}: cannot write {WHAT_FAILED[sink]}: No space left on device\n"
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == kept


def test_a_full_disk_stops_the_run_in_one_line_and_it_resumes_bitwise_once_space_is_freed(straight_run, tmp_path,
                                                                                          monkeypatch, capsys):
    """One workdir, its disk filled three times, each freed before the same command runs again: metrics.jsonl
    (the first row after the step-22 checkpoint), the TensorBoard events (the step-44 evaluation row, before
    that checkpoint), student.pth (the export, after it). Each run stops within seconds of the failed write with
    one line naming the path and the cause, exit 74, its complete checkpoints kept; the last run ends bitwise
    where the straight run ends, every row logged once."""
    workdir = tmp_path / "run"
    for sink, kept in [("metrics.jsonl", ["22"]), ("tensorboard", ["22"]), ("student.pth", ["22", "44"])]:
        disk = fill_disk_under(sink, workdir, monkeypatch)
        assert main(small_run_command(workdir)) == 74, sink
        assert time.monotonic() - disk.since < 10, sink  # within seconds of the failed write
        assert_stopped_in_one_line(workdir, sink, capsys, kept)
        monkeypatch.undo()  # space freed
    assert main(small_run_command(workdir)) == 0
    assert_bitwise_equal(final_params(workdir), final_params(straight_run[0]))
    assert logged_steps(workdir) == logged_steps(straight_run[0])


@pytest.fixture
def small_filesystem(tmp_path):
    """A 1 MB tmpfs mounted at tmp_path/fs (root only; the test is skipped where mounting is not allowed): a run's
    files and one resnet8 checkpoint (0.75 MB) fit, a second does not. Yields (its path, a function that grows
    it to 64 MB)."""
    folder = tmp_path / "fs"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1000k", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root and a system that allows it")
    try:
        yield folder, lambda: subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_checkpoint_that_fills_the_disk_stops_the_run_in_one_line_and_it_resumes_bitwise(
        straight_run, small_filesystem, capsys):
    """On a real 1 MB filesystem, Orbax's background save of the step-44 checkpoint fails (ENOSPC inside
    TensorStore): one line naming the checkpoint directory, exit 74, the step-22 checkpoint kept; with the space
    grown, the same command resumes from it and ends bitwise where the straight run ends."""
    folder, free_space = small_filesystem
    workdir = folder / "run"
    assert main(small_run_command(workdir)) == 74
    assert_stopped_in_one_line(workdir, "checkpoints", capsys, ["22"])
    free_space()
    assert main(small_run_command(workdir)) == 0
    assert_bitwise_equal(final_params(workdir), final_params(straight_run[0]))
    assert logged_steps(workdir) == logged_steps(straight_run[0])


def test_a_tensorboard_file_that_cannot_be_written_is_one_output_error_at_once(tmp_path, monkeypatch):
    """TensorBoard's events are written on the caller's thread: a full disk is an OutputError naming the folder
    when the log opens (before, a traceback, `OSError: handle is closed`) or at the row it hits (before,
    tensorboardX's writer thread died and the 11th row waited forever on its full queue)."""
    import builtins

    import tensorboardX.record_writer

    from jaxkd.errors import OutputError
    from jaxkd.io.metric_log import MetricLog

    disk = FullDisk()
    monkeypatch.setattr(tensorboardX.record_writer, "open",
                        lambda path, *args: disk.wrap(builtins.open(path, *args), path), raising=False)
    disk.full = True
    message = rf"^{tmp_path / 'tensorboard'}: cannot write the TensorBoard events: No space left on device$"
    with pytest.raises(OutputError, match=message):
        MetricLog(tmp_path)
    disk.full = False
    log = MetricLog(tmp_path)
    log.write(0, "train", {"loss": 1.0})
    disk.full = True
    start = time.monotonic()
    for step in range(1, 20):  # more rows than tensorboardX's queue held
        with pytest.raises(OutputError, match=message):
            log.write(step, "train", {"loss": 1.0})
    assert time.monotonic() - start < 5
    log.close()  # the failure was reported: closing adds nothing


def test_a_checkpoint_save_that_stalls_is_one_output_error_after_the_bound(tmp_path, monkeypatch):
    """A save still being written after SAVE_WAIT_SECONDS (a stalled disk or upload, here a save that reports
    itself in progress forever) is one OutputError from `wait_until_saved`, and `close` then returns at once."""
    from typing import Any, NamedTuple

    from jaxkd.errors import OutputError
    from jaxkd.io import run_checkpoint

    class State(NamedTuple):
        step: Any
        weights: Any

    monkeypatch.setattr(run_checkpoint, "SAVE_WAIT_SECONDS", 0.5)
    checkpoints = run_checkpoint.RunCheckpoints(tmp_path, keep=2)
    checkpoints.save(State(np.int32(1), np.ones(3, np.float32)), {"best_top1": 0.0})
    checkpoints.manager.is_saving_in_progress = lambda: True
    start = time.monotonic()
    with pytest.raises(OutputError, match=rf"^{tmp_path / 'checkpoints'}: a checkpoint is still being written after "
                                          r"0.5 s \(a stalled disk or upload\); the complete ones are kept$"):
        checkpoints.wait_until_saved()
    checkpoints.close()
    assert time.monotonic() - start < 5


# A `python -m jaxkd.train` that kills itself (SIGKILL: no handler, no cleanup) at a chosen point: during a
# checkpoint's write (Orbax's asynchronous save under way), during an evaluation, or right after an evaluation's
# row is logged and before that epoch's checkpoint. The hooks go in before the engine imports what they replace.
KILLED_AT = r"""
import os, signal, sys
point = sys.argv[1]

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "checkpoint-write":
    import orbax.checkpoint as ocp
    save = ocp.CheckpointManager.save
    def save_then_die(self, *args, **kwargs):
        save(self, *args, **kwargs)
        kill()
    ocp.CheckpointManager.save = save_then_die
elif point == "evaluation":
    from jaxkd.engine import evaluation
    evaluation.evaluate_classifiers = lambda *args, **kwargs: kill()
elif point == "after-an-eval-row":
    from jaxkd.io.metric_log import MetricLog
    write = MetricLog.write
    def write_then_die(self, step, kind, *args, **kwargs):
        write(self, step, kind, *args, **kwargs)
        if kind == "eval":
            kill()
    MetricLog.write = write_then_die
from jaxkd.train import main
sys.exit(main(["jaxkd.train", *sys.argv[2:]]))
"""


def test_killed_during_checkpoint_writes_and_evaluations_resumes_to_the_uninterrupted_run(straight_run, tmp_path):
    """SIGKILL three times (in a checkpoint's write, in an evaluation, after an evaluation's row), each followed
    by the same command: the run ends bitwise equal to an uninterrupted one, with every metrics row once and
    equal in value (losses, accuracies, evaluations, best), and no temporary checkpoint left."""
    arguments = ["--config", "configs/demo.py:teacher", "--workdir", str(tmp_path), *SMALL]
    for point in ("checkpoint-write", "evaluation", "after-an-eval-row"):
        killed = subprocess.run([sys.executable, "-c", KILLED_AT, point, *arguments], cwd=REPO,
                                capture_output=True, text=True, timeout=300)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-3000:])
        assert not (tmp_path / "model").exists(), point
    finished = subprocess.run([sys.executable, "-m", "jaxkd.train", *arguments], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_bitwise_equal(final_params(tmp_path), final_params(straight_run[0]))
    assert _rows(tmp_path) == _rows(straight_run[0])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["22", "44"]
