"""The training engine end to end on the real digits data: learning, exact resume (also after SIGTERM),
exports, bad configs and a diverging loss."""

import json
import os
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
from convert.torch_models import get_torch_model
from jaxkd.errors import UserError
from jaxkd.model_checkpoint import load_model_checkpoint
from jaxkd.train import main, train_and_evaluate

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--config.model=resnet8", "--config.epochs=2", "--config.eval_every_epochs=1",
         "--config.checkpoint_every_epochs=1", "--config.log_every_steps=5", "--config.progress_bar=False"]


def small_config(epochs=2):
    """resnet8 on digits, 22 steps per epoch: the engine's smallest real run."""
    config = demo.get_config("teacher")
    config.model = "resnet8"
    config.epochs = epochs
    config.eval_every_epochs = 1
    config.checkpoint_every_epochs = 1
    config.log_every_steps = 5
    config.progress_bar = False
    return config


def final_params(workdir):
    return load_model_checkpoint(Path(workdir) / "model")[0]


def assert_bitwise_equal(a, b):
    for (path, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)):
        assert np.array_equal(x, y), jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """Two epochs without interruption: the reference for the resume tests."""
    workdir = tmp_path_factory.mktemp("straight")
    result = train_and_evaluate(small_config(), workdir)
    return workdir, result


def test_resume_after_an_epoch_is_bitwise_exact(straight_run, tmp_path):
    train_and_evaluate(small_config(epochs=1), tmp_path)  # stops after epoch 1 (a finished run)
    result = train_and_evaluate(small_config(epochs=2), tmp_path)  # the same run, extended: resumes at step 22
    assert result["step"] == 44
    assert_bitwise_equal(final_params(tmp_path), final_params(straight_run[0]))


def test_sigterm_mid_epoch_saves_and_resume_is_bitwise_exact(straight_run, tmp_path):
    command = [sys.executable, "-m", "jaxkd.train", "--config", "configs/demo.py:teacher",
               "--workdir", str(tmp_path)] + SMALL
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):  # the first log, at step 5
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "SIGTERM: saved a checkpoint at step" in out
    saved_step = int(out.split("saved a checkpoint at step ")[1].split(";")[0])
    assert 5 <= saved_step < 22  # mid-epoch 1
    assert not (tmp_path / "model").exists()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resumed from {tmp_path / 'checkpoints'} at step {saved_step}" in result.stdout
    assert_bitwise_equal(final_params(tmp_path), final_params(straight_run[0]))


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


def test_kd_demo_learns_digits(tmp_path):
    """Real learning: a teacher well above 90% on the held-out digits, and a KD student far above chance."""
    teacher = small_config(epochs=6)
    teacher.batch_size, teacher.optimizer.lr, teacher.optimizer.lr_decay_epochs = 32, 0.1, (5,)
    teacher_result = train_and_evaluate(teacher, tmp_path / "teacher")
    assert teacher_result["last_top1"] >= 90.0

    student = small_config(epochs=3)
    student.batch_size, student.optimizer.lr_decay_epochs = 32, (2,)  # the last epoch at lr 0.005: stable
    student.method, student.teacher.checkpoint = "kd", str(tmp_path / "teacher")
    student.loss.gamma, student.loss.alpha = 0.1, 0.9
    student_result = train_and_evaluate(student, tmp_path / "student")
    assert student_result["last_top1"] >= 50.0, student_result  # chance is 10%
    records = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    teacher_record = next(r for r in records if r["kind"] == "teacher")
    assert teacher_record["top1"] == pytest.approx(teacher_result["last_top1"])
    assert all(r["kd"] > 0 for r in records if r["kind"] == "train")


@pytest.mark.parametrize("override, message", [
    ("--config.model=resnet110", "unknown model 'resnet110'"),
    ("--config.method=distill_everything", "unknown method 'distill_everything'"),
    ("--config.optimiser.lr=0.1", 'Did you mean "optimizer" instead of "optimiser"'),
    ("--config.optimizer.lrr=0.1", 'Did you mean "lr" instead of "lrr"'),
    ("--config.epochs=abc", "flag --config.epochs=abc: invalid literal for int()"),
    ("--config.method=kd", "method 'kd' needs a teacher"),
    ("--config.teacher.checkpoint=/nonexistent/wrn40_2.pth", "no such file or checkpoint directory"),
    ("--config.optimizer.lr_scaling=sqrt", "optimizer.lr_scaling must be one of none, linear, got 'sqrt'"),
    ("--num_processes=2", "a multi-process run needs the coordinator address"),
    ("--config.dtype=float16", "dtype must be one of float32, bfloat16, got 'float16'"),
])
def test_bad_config_is_one_line_before_any_compile(override, message, tmp_path, capsys):
    compiled = []

    def on_event(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(duration)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    argv = ["train", "--config", str(REPO / "configs/demo.py"), "--workdir", str(tmp_path / "run"), override]
    if "teacher.checkpoint" in override:
        argv.append("--config.method=kd")
    try:
        assert main(argv) == 2
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not compiled and not (tmp_path / "run").exists()


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    train_and_evaluate(small_config(epochs=1), tmp_path)
    checkpoint = tmp_path / "checkpoints" / "22"
    before = {p.relative_to(checkpoint): p.read_bytes() for p in checkpoint.rglob("*") if p.is_file()}

    import jaxkd.train as train_module
    monkeypatch.setattr(train_module, "cross_entropy", lambda logits, labels: jax.numpy.nan * logits.sum())
    with pytest.raises(UserError, match=r"the loss became nan before step 25; stopping. The last good "
                                        r"checkpoint \(step 22\) is kept"):
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
    assert not (tmp_path / "run").exists()


def test_bfloat16_compute_keeps_float32_parameters_statistics_and_loss():
    from jaxkd import train
    from jaxkd.data import epoch_permutation
    from jaxkd.mesh import replicated

    losses, hlo = {}, {}
    for dtype in ("float32", "bfloat16"):
        config = small_config()
        config.dtype = dtype
        setup = train.build(config, jax.devices()[:1])
        whole = replicated(setup.mesh)
        state = jax.device_put(train.create_train_state(setup, config), whole)
        data = jax.device_put((setup.train.images, setup.train.labels, setup.train.index), whole)
        permutation = epoch_permutation(jax.random.PRNGKey(0), 0, num_examples=len(setup.train))
        step = train.make_train_step(setup, config)
        arguments = (state, train.zero_sums(setup), None, *data, permutation)
        hlo[dtype] = step.lower(*arguments).as_text()
        state, sums = step(*arguments)
        losses[dtype] = float(sums["loss"])
        assert {leaf.dtype for leaf in jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
                if jax.numpy.issubdtype(leaf.dtype, jax.numpy.floating)} == {jax.numpy.dtype("float32")}
    # The convolutions run in bfloat16 only when asked; the loss is close to float32's.
    assert "convolution" in hlo["bfloat16"] and "bf16" in hlo["bfloat16"] and "bf16" not in hlo["float32"]
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=2e-2)
    assert losses["bfloat16"] != losses["float32"]

