"""The robustness table: rows named from each checkpoint's metadata, numbers equal to jaxkd.tools.evaluate's (and, for
clean top-1, to PyTorch's), the JSON holding them all, and bad inputs refused (one line, exit 2, nothing written,
nothing evaluated)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import convert
from jaxkd.data import cifar100c
from jaxkd.engine import evaluation
from jaxkd.errors import UserError
from jaxkd.io.model_checkpoint import save_model_checkpoint
from jaxkd.models import get_model
from jaxkd.tools import robustness
from tests.helpers.assertions import assert_one_line_error
from tests.helpers.evaluation_files import (BATCH, assert_matches_reference, labels_half_right, random_images,
                                            spread_model, write_cifar100_python, write_cifar100c)
from tests.helpers.torch_references import torch_logits


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = robustness.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------------ naming


def test_architecture_and_method_names():
    assert robustness.display_arch("wideresnet40_2") == "WRN40-2"
    assert robustness.display_arch("wrn16_1") == "WRN16-1"
    assert robustness.display_arch("resnet56") == "ResNet56"
    here = Path("runs/x/wrn40_2_teacher.pth")
    assert robustness.method_name(None, here) == "wrn40_2_teacher"
    assert robustness.method_name({"method": "none", "saliencymix": False}, here) == "Baseline"
    assert robustness.method_name({"method": "none", "saliencymix": True}, here) == "Baseline + SaliencyMix"
    assert robustness.method_name({"method": "kd", "saliencymix": True}, here) == "KD + SaliencyMix"
    assert [robustness.method_name({"method": m}, here) for m in ("fitnet", "at", "crd", "new")] == \
        ["FitNets", "AT", "CRD", "new"]
    # convert import's metadata: no method, the .pth it came from.
    assert robustness.method_name({"source": "/data/resnet56_kd.pth"}, Path("ckpt")) == "resnet56_kd"
    assert robustness.method_name({"arch": "resnet8"}, Path("imported")) == "imported"


def test_labels_split_at_the_equals_sign_that_names_a_checkpoint(tmp_path):
    odd = tmp_path / "lr=0.1" / "model"
    plain = tmp_path / "plain.pth"
    checkpoints = [str(odd), str(plain)]
    assert robustness.parse_labels([f"{odd}=KD (a=0.9)", f"{plain}=Teacher"], checkpoints) == \
        {str(odd): "KD (a=0.9)", str(plain): "Teacher"}
    # The same path written differently (relative to the working directory) names the same checkpoint.
    relative = os.path.relpath(plain)
    assert robustness.parse_labels([f"{relative}=T"], checkpoints) == {str(plain): "T"}
    for bad, message in [("elsewhere.pth=T", "expected CHECKPOINT=TEXT"), (f"{plain}= ", "the text is empty"),
                         (f"{plain}=a|b", "cannot hold '|'")]:
        with pytest.raises(UserError, match=message):
            robustness.parse_labels([bad], checkpoints)
    with pytest.raises(UserError, match="labelled twice"):
        robustness.parse_labels([f"{plain}=A", f"{plain}=B"], checkpoints)


# ------------------------------------------------------------------------------------------- the table


def test_table_and_json_equal_evaluates_numbers_for_a_pth_a_checkpoint_dir_and_a_workdir(tmp_path, rng, capsys):
    torch_models = [spread_model(100, seed=s) for s in (21, 22, 23)]
    variables = [convert.torch_to_flax(m.state_dict()) for m in torch_models]
    pth = tmp_path / "resnet8_seed.pth"
    torch.save(torch_models[0].state_dict(), pth)
    kd_dir = save_model_checkpoint(tmp_path / "kd_saliencymix", variables[1], {
        "arch": "resnet8", "num_classes": 100, "method": "kd", "saliencymix": True})
    workdir = tmp_path / "baseline_run"
    save_model_checkpoint(workdir / "model", variables[2], {
        "arch": "resnet8", "num_classes": 100, "method": "none", "saliencymix": False, "written_by": "jaxkd.train"})

    # Clean labels: each model's own prediction on some images, so no accuracy is near 0 or 100.
    images = random_images(rng, BATCH + 9)
    logits = [torch_logits(m, images) for m in torch_models]
    labels = labels_half_right(rng, logits[0], 100)
    labels[1::4], labels[3::4] = logits[1][1::4].argmax(1), logits[2][3::4].argmax(1)
    data = write_cifar100_python(tmp_path / "cifar-100-python", images, labels)
    written = write_cifar100c(tmp_path / "CIFAR-100-C", torch_models[0], rng)
    results = tmp_path / "results"
    results.mkdir()
    (results / "table.md").write_text("an earlier table\n")  # replaced: --force
    code, stdout, err = run_cli([pth, kd_dir, workdir, "--cifar100c", tmp_path / "CIFAR-100-C",
                                 "--label", f"{pth}=Seed model", "--source", "cifar100-python", "--data-dir", data,
                                 "--batch-size", BATCH, "--out", results / "table.md", "--json", results / "r.json",
                                 "--force", "--quiet"], capsys)
    assert code == 0, err
    missing = [c for c in cifar100c.CORRUPTIONS if c not in written]
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and all(name in warnings[0] for name in missing), err

    report = json.loads((results / "r.json").read_text())
    opened = cifar100c.open_cifar100c(tmp_path / "CIFAR-100-C")
    model = get_model("resnet8", 100)
    rows = []
    for method, argument, flax_variables, row in zip(["Seed model", "KD + SaliencyMix", "Baseline"],
                                                     [pth, kd_dir, workdir], variables, report["rows"]):
        clean = evaluation.evaluate_split(model, flax_variables, images, labels, BATCH)
        robust = evaluation.evaluate_cifar100c(model, flax_variables, opened, BATCH)
        assert (row["model"], row["method"], row["checkpoint"]) == ("ResNet8", method, str(argument))
        assert row["results"]["clean"] == clean and row["results"]["cifar100c"] == robust
        assert (row["CIFAR100"], row["CIFAR100C"]) == (clean["top1"], robust["top1"])
        assert row["results"]["arch"] == "resnet8" and row["results"]["dataset"] == "cifar100-python test"
        rows.append(f"| ResNet8 | {method} | {clean['top1']:.2f} | {robust['top1']:.2f} |")
    assert 10 < report["rows"][0]["CIFAR100"] < 90  # each row was checked against its own model above
    assert report["rows"][0]["metadata"] is None and report["rows"][1]["metadata"]["method"] == "kd"
    assert report["rows"][2]["loaded"] == str(workdir / "model")
    assert report["cifar100c"]["evaluated"] == list(written) and report["cifar100c"]["missing"] == missing
    # Clean top-1 of the .pth, computed by PyTorch.
    assert_matches_reference(report["rows"][0]["results"]["clean"], logits[0], labels)

    table = (results / "table.md").read_text()
    assert table.splitlines()[:5] == ["| model | method | CIFAR100 | CIFAR100C |", "|---|---|---:|---:|"] + rows
    assert f"mean over 3 corruptions x 5 severities ({3 * 5 * 7} images), leaving out 16" in table
    assert stdout.startswith(table) and f"wrote {results / 'table.md'}" in stdout
    assert sorted(p.name for p in results.iterdir()) == ["r.json", "table.md"]  # no temporary file left


def test_without_cifar100c_the_table_has_the_clean_column_alone(tmp_path, rng, capsys):
    """The seed's baseline tables: clean top-1 per checkpoint, equal to PyTorch's for a .pth."""
    torch_models = [spread_model(100, seed=s) for s in (24, 25)]
    pth = tmp_path / "resnet8_seed.pth"
    torch.save(torch_models[0].state_dict(), pth)
    workdir = tmp_path / "baseline_run"
    save_model_checkpoint(workdir / "model", convert.torch_to_flax(torch_models[1].state_dict()), {
        "arch": "resnet8", "num_classes": 100, "method": "none", "saliencymix": False, "written_by": "jaxkd.train"})
    images = random_images(rng, BATCH + 3)
    logits = [torch_logits(m, images) for m in torch_models]
    labels = labels_half_right(rng, logits[0], 100)
    data = write_cifar100_python(tmp_path / "cifar-100-python", images, labels)
    code, stdout, err = run_cli([pth, workdir, "--source", "cifar100-python", "--data-dir", data, "--batch-size",
                                 BATCH, "--json", tmp_path / "r.json", "--quiet"], capsys)
    assert code == 0 and err == "", err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["columns"] == ["model", "method", "CIFAR100"] and report["cifar100c"] is None
    for row, torch_logit in zip(report["rows"], logits):
        assert_matches_reference(row["results"]["clean"], torch_logit, labels)
        assert row["CIFAR100C"] is None and row["results"]["cifar100c"] is None
    top1 = [row["CIFAR100"] for row in report["rows"]]
    assert top1[0] != top1[1]  # two models, two numbers
    assert stdout.splitlines()[:4] == ["| model | method | CIFAR100 |", "|---|---|---:|",
                                       f"| ResNet8 | resnet8_seed | {top1[0]:.2f} |",
                                       f"| ResNet8 | Baseline | {top1[1]:.2f} |"]
    assert f"CIFAR100: the cifar100-python test split ({BATCH + 3} images)." in stdout and "CIFAR100C" not in stdout


def test_the_clean_column_is_named_by_its_source():
    """`--source digits` heads its clean column "digits" (it said CIFAR100); CIFAR-100's sources keep CIFAR100."""
    assert [robustness.clean_column_name(s) for s in ("digits", "tfds", "cifar100-python")] == [
        "digits", "CIFAR100", "CIFAR100"]
    report = {"columns": list(robustness.CLEAN_ONLY_COLUMNS), "dataset": "digits test", "clean_images": 360,
              "clean_column": "digits", "cifar100c": None,
              "rows": [{"model": "ResNet8", "method": "Baseline", "CIFAR100": 95.0}]}
    table = robustness.format_table(report)
    assert table.splitlines()[0] == "| model | method | digits |" and "CIFAR100" not in table
    assert "digits: the digits test split (360 images)." in table


# -------------------------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    torch_model = spread_model(100, seed=31)
    torch.save(torch_model.state_dict(), folder / "good.pth")
    torch.save(spread_model(10, seed=32).state_dict(), folder / "ten.pth")
    (folder / "not_a_checkpoint").mkdir()
    (folder / "unfinished_run" / "checkpoints").mkdir(parents=True)  # a training workdir before its model/
    (folder / "unfinished_run" / "config.json").write_text("{}\n")
    write_cifar100c(folder / "c", torch_model, rng, corruptions=("fog",))
    (folder / "c_empty").mkdir()
    np.save(folder / "c_empty" / "labels.npy", np.zeros(35, np.int64))
    write_cifar100_python(folder / "cifar-100-python", random_images(rng, 20), rng.integers(0, 100, 20))
    return folder


BAD = {  # name: (checkpoints, extra arguments, expected message); {o} is the output folder
    "missing checkpoint": (["good.pth", "nothing.pth"], [], "nothing.pth: no such file or checkpoint directory"),
    "not a checkpoint": (["good.pth", "not_a_checkpoint"], [], "not_a_checkpoint: not a jaxkd model checkpoint"),
    "unfinished run": (["good.pth", "unfinished_run"], [],
                       "unfinished_run: a training workdir without its final model/ (written when the run ends"),
    "10 classes": (["good.pth", "ten.pth"], [], "ten.pth: the model has 10 classes; CIFAR-100-C has 100"),
    "no CIFAR-100-C folder": (["good.pth"], ["--cifar100c", "nowhere"], "CIFAR-100-C folder nowhere does not exist"),
    "no corruption file": (["good.pth"], ["--cifar100c", "c_empty"], "has no readable corruption file"),
    "existing --out": (["good.pth"], ["--out", "{o}/kept.md"], "kept.md: already exists (pass --force"),
    "existing --json": (["good.pth"], ["--json", "{o}/kept.json"], "kept.json: already exists (pass --force"),
    "--out under a file": (["good.pth"], ["--out", "{o}/kept.md/t.md"], "kept.md, which is not a directory"),
    "--out a directory": (["good.pth"], ["--out", "{o}"], ": is a directory (give a file name)"),
    "same outputs": (["good.pth"], ["--out", "{o}/a", "--json", "{o}/a"], "--out and --json name the same file"),
    "unknown label": (["good.pth"], ["--label", "other.pth=X"], "--label other.pth=X: expected CHECKPOINT=TEXT"),
    "batch size": (["good.pth"], ["--batch-size", "0"], "--batch-size must be positive, got 0"),
    "10 classes, clean only": (["ten.pth"], ["--cifar100c", ""],
                               "ten.pth: the model has 10 classes, but the cifar100-python test split has 100"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_give_one_line_and_neither_evaluate_nor_write(case, inputs, tmp_path, capsys, monkeypatch):
    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before every input was checked")

    monkeypatch.setattr(robustness, "evaluate_split", no_evaluation)
    monkeypatch.setattr(robustness, "evaluate_cifar100c", no_evaluation)
    monkeypatch.chdir(inputs)
    (tmp_path / "kept.md").write_text("kept\n")
    (tmp_path / "kept.json").write_text("{}\n")
    checkpoints, extra, expected = BAD[case]
    argv = checkpoints + ["--cifar100c", "c", "--source", "cifar100-python", "--data-dir", "cifar-100-python",
                          "--out", tmp_path / "t.md", "--json", tmp_path / "r.json", "--quiet"]
    argv += [a.format(o=tmp_path) for a in extra]  # later flags win
    assert_one_line_error(*run_cli(argv, capsys), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json", "kept.md"]
    assert (tmp_path / "kept.md").read_text() == "kept\n" and (tmp_path / "kept.json").read_text() == "{}\n"
