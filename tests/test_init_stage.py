"""The engine's init stage (jaxkd/engine/init_stage.py) end to end on digits, with AB (connectors and the student's
feature modules train in it): a run stopped (SIGTERM) inside the init stage resumes there, one stopped during the
stage's last step resumes after it, a run stopped in training resumes without rerunning it, and all end bitwise
equal to a straight run, every row logged once. One init epoch and one
training epoch of 22 steps, the shortest run that shows it.
The student's modules the stage trains are RepDistiller's `get_feat_modules` for each family. The method-level
parity of the stage (3 init steps against RepDistiller's `init` in PyTorch) is in tests/test_method_ab.py,
test_method_ft.py and test_method_fsp.py."""

import contextlib
import io
import json

import jax
import jax.numpy as jnp
import pytest

from configs import repdistiller
from jaxkd.engine.init_stage import feature_module_names
from jaxkd.engine.loop import train_and_evaluate
from jaxkd.models import get_model
from tests.helpers.assertions import assert_bitwise_equal
from tests.helpers.runs import final_params, on_digits, save_random_teacher, stop_during_call


def ab_config(teacher_path):
    config = on_digits(repdistiller.get_config("wrn_16_2,resnet8,ab"), epochs=1, log_every_steps=11)
    config.teacher.checkpoint, config.teacher.arch = str(teacher_path), "wideresnet16_2"  # connectors: 1x1 convs
    config.ab.init_epochs = 1
    return config


def rows(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def run(config, workdir, stop_at_call: int | None = None, monkeypatch=None) -> str:
    """Runs (or resumes) the run, stopping as a SIGTERM that arrives while host call `stop_at_call` runs would
    (init and train programs counted together); returns its output."""
    output = io.StringIO()
    if stop_at_call is not None:
        stop_during_call(monkeypatch, stop_at_call)
    with contextlib.redirect_stdout(output):
        if stop_at_call is None:
            train_and_evaluate(config, workdir)
        else:
            with pytest.raises(SystemExit) as stopped:
                train_and_evaluate(config, workdir)
            assert stopped.value.code == 143
            monkeypatch.undo()
    return output.getvalue()


@pytest.mark.slow
def test_stopped_in_the_init_stage_or_in_training_resumes_bitwise_without_rerunning_it(tmp_path, monkeypatch):
    config = ab_config(save_random_teacher(tmp_path / "teacher.pth", "wideresnet16_2", 10))
    config.progress_bar = True  # output to a file: a progress line at each of the stage's log steps
    straight = run(config, tmp_path / "straight")
    config.progress_bar = False
    assert "init epoch 1/1" in straight
    assert [line.split(":")[0] for line in straight.splitlines() if line.startswith("init epoch 1/1 step ")] == [
        "init epoch 1/1 step 11/22", "init epoch 1/1 step 22/22"]
    straight_rows = rows(tmp_path / "straight")
    init_rows = [(r["step"], r["init_step"], r["loss"]) for r in straight_rows if r["kind"] == "init"]
    assert [row[:2] for row in init_rows] == [(-11, 11), (0, 22)]  # steps <= 0: before training's
    assert sorted(p.name for p in (tmp_path / "straight" / "checkpoints").iterdir() if p.name.isdigit()) == ["0", "22"]

    stopped = tmp_path / "stopped"
    run(config, stopped, stop_at_call=12, monkeypatch=monkeypatch)  # during the 12th init step
    assert sorted(p.name for p in (stopped / "init_checkpoints").iterdir()) == ["12"]
    assert not [p for p in (stopped / "checkpoints").iterdir() if p.name.isdigit()]
    # resumed in the init stage (10 calls left there), stopped during its last step: saved as the stage's end
    output = run(config, stopped, stop_at_call=10, monkeypatch=monkeypatch)
    assert "resumed the init stage" in output and "at init step 12" in output
    assert "22" in [p.name for p in (stopped / "init_checkpoints").iterdir()]
    assert not [p for p in (stopped / "checkpoints").iterdir() if p.name.isdigit()]
    # resumed after the stage's last step (none left), stopped again 4 steps into training
    output = run(config, stopped, stop_at_call=4, monkeypatch=monkeypatch)
    assert "at init step 22" in output and "init epoch" not in output
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir() if p.name.isdigit()) == ["0", "4"]
    output = run(config, stopped)
    assert "resumed from" in output and "init stage" not in output and "init epoch" not in output  # not rerun
    assert_bitwise_equal(final_params(stopped), final_params(tmp_path / "straight"))
    resumed_rows = rows(stopped)
    resumed_init = [(r["step"], r["init_step"], r["loss"]) for r in resumed_rows if r["kind"] == "init"]
    # every init step logged once: the stop's partial window (step 12) inserted, the same loss where the
    # windows agree (steps 1-11)
    assert [row[:2] for row in resumed_init] == [(-11, 11), (-10, 12), (0, 22)]
    assert resumed_init[0] == init_rows[0]
    teacher_rows = [r for r in resumed_rows if r["kind"] == "teacher"]
    assert len(teacher_rows) == 1 and teacher_rows[0]["step"] == -22  # before the init stage's first row
    assert teacher_rows == [r for r in straight_rows if r["kind"] == "teacher"]
    assert sorted((r["step"], r["kind"]) for r in resumed_rows if r["kind"] in ("train", "eval")) == \
        [(4, "train"), (11, "train"), (22, "eval"), (22, "train")]


def test_feature_modules_are_repdistillers_get_feat_modules():
    """The student's modules the init stage trains, per family: all but the classifier, and but the WRN family's
    final BN (`bn1`), MobileNetV2's final 1x1 conv (`conv2`), ShuffleV2's final conv and BN (`conv2`, `bn2`)."""
    left_out = {"rd_resnet8": {"fc"}, "wideresnet16_2": {"finalact", "linear"}, "resnet8": {"finalact", "linear"},
                "vgg8": {"classifier"}, "MobileNetV2": {"conv2.0", "conv2.1", "classifier.0"},
                "ShuffleV1": {"linear"}, "ShuffleV2": {"conv2", "bn2", "linear"}, "ResNet50": {"linear"}}
    for arch, expected in left_out.items():
        model = get_model(arch, 10)
        params = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))["params"]
        assert set(params) - feature_module_names(params) == expected, arch
