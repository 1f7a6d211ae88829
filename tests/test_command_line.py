"""The config-driven commands' command line as a new user meets it: `--help`, and configs loaded from any
working directory (the project's by path, and a user's own config that builds on them)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_module(module: str, *arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *arguments], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("module, flag", [("jaxkd.train", "--help"), ("jaxkd.bench", "-h")])
def test_help_lists_the_flags_every_config_key_with_its_default_and_the_names(module, flag, tmp_path):
    result = run_module(module, flag, cwd=tmp_path)  # any folder: no config given, the defaults are shown
    assert result.returncode == 0 and result.stderr == "", result.stderr
    out = result.stdout
    assert out.startswith(f"usage: python -m {module} --config")
    assert "  --config.optimizer.lr=0.05" in out and "--config.teacher.checkpoint=''  # a .pth" in out
    assert "--workdir: where checkpoints" in out if module == "jaxkd.train" else "--steps: train steps" in out
    assert "models (config.model, config.teacher.arch): resnet8, " in out and "wideresnet40_2" in out
    assert "methods (config.method): none, kd, " in out


def test_a_config_loads_from_any_folder_and_a_users_config_builds_on_the_projects(tmp_path):
    by_path = run_module("jaxkd.train", "--config", str(REPO / "configs" / "kd_wrn.py"), "--help", cwd=tmp_path)
    assert by_path.returncode == 0, by_path.stderr
    assert "--config.method='kd'" in by_path.stdout and "--config.loss.alpha=0.9" in by_path.stdout
    (tmp_path / "my_kd.py").write_text("from configs import kd_wrn\n\n\ndef get_config():\n"
                                       "    config = kd_wrn.get_config()\n    config.model = 'resnet8'  # smaller\n"
                                       "    return config\n")
    own = run_module("jaxkd.train", "--config", "my_kd.py", "--config.epochs=3", "--help", cwd=tmp_path)
    assert own.returncode == 0, own.stderr
    assert "--config.model='resnet8'  # smaller" in own.stdout and "--config.method='kd'" in own.stdout


def test_the_projects_configs_load_by_their_relative_path_from_any_folder_and_help_names_every_model(
        tmp_path, monkeypatch, capsys):
    """`--config configs/demo.py` from another folder finds the project's configs (a file of that name where the
    user is wins), and --help names every model get_model accepts, RepDistiller's zoo and the aliases too."""
    from jaxkd.config.command_line import parse_config_command_line
    from jaxkd.models import ALIASES, all_architectures, canonical_name
    from jaxkd.train import TRAIN_USAGE, _define_train_flags

    monkeypatch.chdir(tmp_path)
    flag_values = parse_config_command_line(["train", "--config", "configs/demo.py:student", "--workdir", "w",
                                             "--config.epochs=3"], _define_train_flags, TRAIN_USAGE)
    assert flag_values.config.method == "kd" and flag_values.config.epochs == 3
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.py").write_text("from configs import demo as project\n\n\ndef get_config(arg):\n"
                                                  "    config = project.get_config(arg)\n    config.epochs = 7\n"
                                                  "    return config\n")
    own = parse_config_command_line(["train", "--config=configs/demo.py:teacher", "--workdir", "w"],
                                    _define_train_flags, TRAIN_USAGE)
    assert own.config.epochs == 7  # the user's own configs/demo.py
    with pytest.raises(SystemExit):
        parse_config_command_line(["train", "--help"], _define_train_flags, TRAIN_USAGE)
    models_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("models ("))
    named = set(re.findall(r"[\w-]+", models_line))
    assert set(all_architectures()) | set(ALIASES) <= named
    assert all(canonical_name(name) for name in ALIASES)


def test_help_with_a_broken_config_is_the_runs_one_line_error(tmp_path):
    (tmp_path / "broken.py").write_text("def get_config():\n    raise ValueError('no such recipe')\n")
    result = run_module("jaxkd.train", "--config", "broken.py", "--help", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: bad command line or config:") and "no such recipe" in result.stderr


UNWRITABLE = Path("/sys")  # sysfs: no one, root included, can create a file there


@pytest.mark.skipif(not UNWRITABLE.is_dir(), reason="needs Linux's /sys")
@pytest.mark.parametrize("module, arguments", [
    ("jaxkd.evaluate", ["--checkpoint", "missing.pth", "--out", "{out}/results.json"]),
    ("jaxkd.robustness", ["missing.pth", "--out", "{out}/table.md"]),
    ("convert.__main__", ["import", "missing.pth", "--out", "{out}/imported"]),
    ("convert.__main__", ["export", "missing_dir", "--out", "{out}/student.pth"]),
    # absl-style mains take the whole sys.argv, program name first
    ("jaxkd.bench", ["bench", "--config", str(REPO / "configs" / "kd_wrn.py"), "--out", "{out}/records"]),
    ("jaxkd.train", ["train", "--config", str(REPO / "configs" / "demo.py"), "--workdir", "{out}/run"]),
])
def test_an_output_that_cannot_be_written_is_one_line_before_any_work(module, arguments, capsys):
    """The inputs do not exist: the error names the output, so it was checked before anything was read."""
    import importlib
    import time

    main = importlib.import_module(module).main
    start = time.perf_counter()
    status = main([argument.format(out=UNWRITABLE / "new") for argument in arguments])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert f"cannot write in {UNWRITABLE}" in err and err.startswith("error: ")
    assert seconds < 5, seconds


def test_the_train_command_starts_without_importing_pytorch(tmp_path):
    """PyTorch is for .pth files only: importing it (through tensorboardX) cost every run's start ~1.7 s."""
    result = subprocess.run([sys.executable, "-c", "import sys, jaxkd.train, jaxkd.io.metric_log; "
                             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
