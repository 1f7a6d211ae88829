"""`python -m jaxkd.runs`: a small table (one pair x KD x 3 seeds on digits) written as a run list, run,
stopped once mid-way with SIGTERM (as a preempted job is) and run again: finished runs are skipped, the stopped
one resumes to its end, the runs after it start, and `jaxkd.tools.report` turns the workdirs into the table their
metrics give (its grouping of several cells: tests/test_report.py)."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from jaxkd.pytorch.torch_models import get_torch_model
from jaxkd.tools import report, runs
from tests.helpers.assertions import assert_one_line_error
from tests.helpers.runs import SMALL_DIGITS, final_params

REPO = Path(__file__).resolve().parent.parent
PAIRS = [("resnet8", "resnet8")]  # RepDistiller's names: post-activation rd_resnet*, its smallest
METHODS = ["kd"]  # lists of every method: test_a_table_list_has_every_cell_of_repdistillers_table_...()
SEEDS = [0, 1, 2]
EPOCHS = 3
# digits (16x16) at batch 128: 11 steps per epoch; every epoch evaluated and checkpointed
ON_DIGITS = ["--config.data.source=digits", f"--config.data.digits_size={SMALL_DIGITS}", "--config.data.drop_last=True",
             f"--config.epochs={EPOCHS}", "--config.batch_size=128", "--config.eval_every_epochs=1",
             "--config.checkpoint_every_epochs=1", "--config.log_every_steps=11", "--config.progress_bar=False"]


def write_released_teachers(folder: Path) -> None:
    """Random rd_resnet teachers where RepDistiller's fetch_pretrained_teachers.sh puts its files, saved as its
    train_teacher.py saves them: the paths configs/repdistiller.py expects."""
    for name in {teacher for teacher, _ in PAIRS}:
        torch.manual_seed(0)
        path = folder / "save" / "models" / f"{name}_vanilla" / "ckpt_epoch_240.pth"
        path.parent.mkdir(parents=True)
        model = get_torch_model(f"rd_{name}", 10)
        torch.save({"epoch": 240, "model": model.state_dict(), "accuracy": 50.0, "optimizer": None}, path)


def environment():
    """The runs' environment: this checkout's code (and the session's compilation cache, tests/conftest.py: a
    cell's second seed and the straight run compile nothing new)."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}


def command(*args, cwd):
    return subprocess.run([sys.executable, "-m", "jaxkd.runs", *args], cwd=cwd, env=environment(),
                          capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """The list written, run, stopped during its second run, run again to the end. Returns (folder, the list's
    workdirs, the output of the first and the second `run`)."""
    folder = tmp_path_factory.mktemp("table")
    write_released_teachers(folder)
    listed = command("list", "--root", "rd_table", "--pairs", ",".join(f"{t}:{s}" for t, s in PAIRS),
                     "--methods", ",".join(METHODS), "--seeds", ",".join(map(str, SEEDS)),
                     "--config", str(REPO / "configs" / "repdistiller.py"), "--out", "runs.txt", "--", *ON_DIGITS,
                     cwd=folder)
    assert listed.returncode == 0, listed.stderr
    lines = (folder / "runs.txt").read_text().splitlines()
    workdirs = [folder / runs.workdir_of(shlex.split(line), "") for line in lines]

    second_run = workdirs[1]
    with open(folder / "first.log", "w") as log:  # a file, not a pipe nobody reads while the runs write
        first = subprocess.Popen([sys.executable, "-m", "jaxkd.runs", "run", "runs.txt"], cwd=folder,
                                 env=environment(), stdout=log, stderr=subprocess.STDOUT)
    try:
        while not (second_run / "checkpoints" / "11").exists():  # the second run has finished its first epoch
            assert first.poll() is None, (folder / "first.log").read_text()
            time.sleep(0.05)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=600) == 143, (folder / "first.log").read_text()
    finally:
        first.kill()
    first_output = (folder / "first.log").read_text()

    second = command("run", "runs.txt", cwd=folder)
    assert second.returncode == 0, second.stdout + second.stderr
    return folder, workdirs, first_output, second.stdout


def test_list_has_one_command_per_pair_method_and_seed(table):
    folder, workdirs, _, _ = table
    lines = (folder / "runs.txt").read_text().splitlines()
    assert len(lines) == len(PAIRS) * len(METHODS) * len(SEEDS) == len(set(workdirs))
    assert lines[0].startswith(f"python -m jaxkd.train --config {REPO}/configs/repdistiller.py:resnet8,resnet8,kd "
                               "--workdir rd_table/resnet8-resnet8/kd/seed0 --config.seed=0 --config.data.source=")


def test_a_stopped_list_skips_finished_runs_and_resumes_the_stopped_one(table):
    folder, workdirs, first_output, second_output = table
    stopped = workdirs[1].relative_to(folder)
    assert f"stopped during {stopped}" in first_output
    total = len(workdirs)
    assert f"[3/{total}]" not in first_output  # the list stopped with its run
    for number, workdir in enumerate(workdirs[:1], 1):
        assert f"[{number}/{total}] finished, skipped: {workdir.relative_to(folder)}" in second_output
    assert f"[2/{total}] running" in second_output and "resumed from" in second_output
    assert f"[{total}/{total}] running" in second_output
    # the stopped run, resumed by the same command, ends at its last step with each epoch's rows once (that a
    # resumed run ends bit for bit where a straight one does is tests/test_train.py's SIGTERM and SIGKILL tests')
    rows = [json.loads(line) for line in (workdirs[1] / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows if row["kind"] == "eval"] == list(range(1, EPOCHS + 1))
    assert [row["step"] for row in rows if row["kind"] == "train"] == [11 * epoch for epoch in range(1, EPOCHS + 1)]
    assert (workdirs[1] / "student.pth").is_file() and final_params(workdirs[1])  # exported at its end


def test_report_of_the_table_equals_the_metrics_of_its_workdirs(table):
    folder, workdirs, _, _ = table
    result = report.build_report([report.load_run(str(w)) for w in workdirs], {})
    assert not result["left_out"]
    assert len(result["rows"]) == len(PAIRS) * len(METHODS)
    for row in result["rows"]:
        cell = f"{row['teacher'].removeprefix('rd_')}-{row['student'].removeprefix('rd_')}/{row['method']}/"
        curves = [eval_top1(w) for w in workdirs if cell in str(w)]
        last = [curve[EPOCHS] for curve in curves]
        best = [max(curve.values()) for curve in curves]
        assert row["runs"] == len(SEEDS) == len(curves)
        assert row["last_top1"]["mean"] == pytest.approx(np.mean(last), abs=1e-9)
        assert row["last_top1"]["std"] == pytest.approx(np.std(last, ddof=1), abs=1e-9)
        assert row["best_top1"]["mean"] == pytest.approx(np.mean(best), abs=1e-9)
        assert row["best_top1"]["std"] == pytest.approx(np.std(best, ddof=1), abs=1e-9)


def eval_top1(workdir: Path) -> dict[int, float]:
    """Each evaluated epoch's test top-1, read from the run's metrics.jsonl directly."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {row["epoch"]: row["top1"] for row in rows if row["kind"] == "eval"}


@pytest.mark.parametrize("args, message", [
    (["list", "--root", "r"], "name the pairs: --table"),
    (["list", "--root", "r", "--table", "bogus"], "--table 'bogus': known tables are repdistiller-same"),
    (["list", "--root", "r", "--pairs", "resnet8"], "each pair is TEACHER:STUDENT, got 'resnet8'"),
    (["list", "--root", "r", "--pairs", "resnet8:resnet8", "--methods", "kd,kdd"], "'kdd' is not one of"),
    (["list", "--root", "r", "--pairs", "resnet8:resnet8", "--seeds", "0,0"], "at least one seed, each once"),
    (["list", "--root", "r", "--pairs", "resnet8:resnet8", "resnet8"], "unexpected argument 'resnet8'"),
    (["list", "--root", "r", "--pairs", "resnet8:resnet8", "--", "--config.seed=3"], "the seeds are --seeds"),
    (["run", "missing.txt"], "missing.txt: cannot read the run list"),
])
def test_mistakes_are_one_line(args, message, tmp_path, capsys):
    assert runs.main(args) == 2
    captured = capsys.readouterr()
    assert_one_line_error(2, captured.out, captured.err, message)


@pytest.mark.parametrize("content, message", [
    ("python -m jaxkd.train --workdir a\nrm -rf a\n", "runs.txt:2: not a `python -m jaxkd.train` command"),
    ("python -m jaxkd.train --config c.py\n", "runs.txt:1: the command has no --workdir"),
    ("python -m jaxkd.train --workdir a\n# a comment\npython -m jaxkd.train --workdir=./a\n",
     "runs.txt:3: workdir ./a is also line 1's"),
    ("# nothing yet\n\n", "runs.txt: no commands"),
])
def test_a_bad_run_list_is_one_line_before_any_run(content, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("runs.txt").write_text(content)
    assert runs.main(["run", "runs.txt"]) == 2
    captured = capsys.readouterr()
    assert_one_line_error(2, captured.out, captured.err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.txt"]  # nothing ran


def test_a_table_list_has_every_cell_of_repdistillers_table_and_its_na_cells_as_comments(capsys):
    assert runs.main(["list", "--root", "t", "--table", "repdistiller-same", "--methods", "kd,fsp", "--seeds",
                      "0,1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("python -m jaxkd.train --config configs/repdistiller.py:wrn_40_2,wrn_16_2,kd "
                        "--workdir t/wrn_40_2-wrn_16_2/kd/seed0 --config.seed=0")
    # 7 pairs x 2 methods x 2 seeds, but FSP's wrn_40_2 -> wrn_40_1 cell is N/A in RepDistiller's README
    assert len(lines) == 7 * 2 * 2 - 2 + 1
    assert "# fsp on wrn_40_2 -> wrn_40_1: N/A in RepDistiller's table" in lines
    assert any("resnet32x4,resnet8x4,fsp --workdir t/resnet32x4-resnet8x4/fsp/seed1" in line for line in lines)


def test_the_imagenet_table_list_has_its_pairs_and_methods_and_no_cell_without_upstream_settings(capsys):
    """`--table imagenet`: configs/imagenet.py's methods on its two pairs (the config and methods by default),
    the cells no upstream repository gives settings for as comments; its methods checked as the config's."""
    assert runs.main(["list", "--root", "in", "--table", "imagenet", "--seeds", "0,1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("python -m jaxkd.train --config configs/imagenet.py:tv_resnet34,tv_resnet18,kd "
                        "--workdir in/tv_resnet34-tv_resnet18/kd/seed0 --config.seed=0")
    # 2 pairs x 9 methods x 2 seeds, less OFD on R34 -> R18 and KD + LS on R50 -> MobileNetV1 (a comment each)
    assert len(lines) == 2 * 9 * 2 - 2 * 2 + 2
    comments = [line for line in lines if line.startswith("#")]
    why = "no ImageNet setting for the pair upstream (jaxkd/config/recipes.py IMAGENET_UPSTREAM)"
    assert comments == [f"# ofd on tv_resnet34 -> tv_resnet18: {why}", f"# kd_ls on tv_resnet50 -> MobileNetV1: {why}"]
    assert "python -m jaxkd.train --config configs/imagenet.py:tv_resnet50,MobileNetV1,kd_dot --workdir " \
           "in/tv_resnet50-MobileNetV1/kd_dot/seed1 --config.seed=1" in lines
    assert runs.main(["list", "--root", "in", "--table", "imagenet", "--methods", "kd,fitnet"]) == 2
    assert "--methods: 'fitnet' is not one of kd, at, crd" in capsys.readouterr().err


def test_a_run_that_cannot_write_its_outputs_stops_the_list(tmp_path, capsys, monkeypatch):
    """Exit status 74 (a full disk, a bucket refusing uploads: jaxkd.errors.OutputError) would fail every later
    run alike: the runner stops there with one line and the same status, the later runs not started."""
    monkeypatch.chdir(tmp_path)
    Path("runs.txt").write_text("python -m jaxkd.train --workdir a\npython -m jaxkd.train --workdir b\n")
    started = []

    class RunThatCannotWrite:
        def __init__(self, argv, **kwargs):
            started.append(argv)

        def wait(self):
            return 74

        def poll(self):
            return 74

    monkeypatch.setattr(runs.subprocess, "Popen", RunThatCannotWrite)
    assert runs.main(["run", "runs.txt"]) == 74
    assert [argv[-1] for argv in started] == ["a"]
    out = capsys.readouterr().out
    assert "[1/2] could not write its outputs (see its error line): a; stopped the list" in out
