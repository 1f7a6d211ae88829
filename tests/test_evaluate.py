"""Evaluation: accuracies against the PyTorch reference model, CIFAR-100-C bookkeeping, one compile for every
dataset, and the command line's outputs and bad inputs (one line, exit 2, nothing written)."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

import convert
from jaxkd.data import cifar100c
from jaxkd.data.sources import load_split
from jaxkd.engine import evaluation
from jaxkd.errors import UserError
from jaxkd.io.model_checkpoint import save_model_checkpoint
from jaxkd.models import get_model
from jaxkd.tools import evaluate
from tests.helpers.assertions import assert_one_line_error
from tests.helpers.evaluation_files import (BATCH, BLOCK, WRITTEN_CORRUPTIONS, assert_matches_reference,
                                            labels_half_right, random_images, spread_model, write_cifar100_python,
                                            write_cifar100c)
from tests.helpers.torch_references import MEAN, REPDISTILLER_MEAN_STD, STD, randomized_torch_model, torch_logits


@pytest.fixture(scope="module")
def model100():
    torch_model = spread_model(100, seed=3)
    return torch_model, convert.torch_to_flax(torch_model.state_dict()), get_model("resnet8", 100)


# ------------------------------------------------------------------------------------------ library: clean


def test_evaluate_split_matches_pytorch_on_a_set_that_is_not_a_multiple_of_the_batch(rng):
    torch_model = spread_model(10, seed=int(rng.integers(1000)))
    images = random_images(rng, 3 * BATCH + 11)
    logits = torch_logits(torch_model, images)
    labels = labels_half_right(rng, logits, 10)
    result = evaluation.evaluate_split(get_model("resnet8", 10), convert.torch_to_flax(torch_model.state_dict()),
                                     images, labels, BATCH)
    assert_matches_reference(result, logits, labels)
    assert 10 < result["top1"] < 90 and len(np.unique(logits.argmax(1))) > 1


def test_labels_outside_the_models_classes_are_a_user_error():
    images = np.zeros((3, 32, 32, 3), np.uint8)
    with pytest.raises(UserError, match=r"labels 0\.\.12, but the model has 10 classes"):
        evaluation.evaluate_split(get_model("resnet8", 10), None, images, np.array([0, 12, 3]), BATCH)


# ------------------------------------------------------------------------------------------ CIFAR-100-C


def test_cifar100c_splits_severities_and_averages_like_an_independent_computation(model100, tmp_path, rng):
    torch_model, variables, model = model100
    written = write_cifar100c(tmp_path, torch_model, rng)
    opened = cifar100c.open_cifar100c(tmp_path)
    result = evaluation.evaluate_cifar100c(model, variables, opened, BATCH)

    labels = np.load(tmp_path / "labels.npy")
    assert result["evaluated"] == list(WRITTEN_CORRUPTIONS) and result["unreadable"] == {}
    assert result["missing"] == [c for c in cifar100c.CORRUPTIONS if c not in WRITTEN_CORRUPTIONS]
    every = []
    for corruption, images in written.items():
        per_severity = []
        for severity in range(1, 6):
            rows = slice((severity - 1) * BLOCK, severity * BLOCK)
            logits = torch_logits(torch_model, images[rows])
            got = result["corruptions"][corruption]["severities"][str(severity)]
            assert_matches_reference(got, logits, labels[rows])
            per_severity.append(got["top1"])
        np.testing.assert_allclose(result["corruptions"][corruption]["top1"], np.mean(per_severity), rtol=1e-12)
        every += per_severity
    np.testing.assert_allclose(result["top1"], np.mean(every), rtol=1e-12)
    assert len(set(every)) > 2  # the severities really differ, so a wrong block split would show


def test_an_unreadable_corruption_file_is_skipped_and_the_others_complete(model100, tmp_path, rng):
    torch_model, variables, model = model100
    write_cifar100c(tmp_path, torch_model, rng)
    np.save(tmp_path / "fog.npy", np.zeros((5 * BLOCK, 16, 16, 3), np.uint8))  # wrong shape
    result = evaluation.evaluate_cifar100c(model, variables, cifar100c.open_cifar100c(tmp_path), BATCH)
    assert result["evaluated"] == ["brightness", "zoom_blur"] and list(result["corruptions"]) == result["evaluated"]
    assert "fog.npy holds uint8 (35, 16, 16, 3)" in result["unreadable"]["fog"]


def test_cifar100c_needs_a_100_class_model(tmp_path, rng):
    write_cifar100c(tmp_path, randomized_torch_model("resnet8", 100), rng, corruptions=("fog",))
    with pytest.raises(UserError, match="CIFAR-100-C has 100 classes, but the model has 10"):
        evaluation.evaluate_cifar100c(get_model("resnet8", 10), None, cifar100c.open_cifar100c(tmp_path), BATCH)


# --------------------------------------------------------------------------------------- one compile


def test_one_compile_for_every_batch_and_every_dataset(model100, tmp_path, rng, caplog):
    torch_model, variables, model = model100
    write_cifar100c(tmp_path, torch_model, rng)
    opened = cifar100c.open_cifar100c(tmp_path)
    clean_images = random_images(rng, 2 * BATCH + 5)
    clean_labels = rng.integers(0, 100, len(clean_images))
    step = evaluation.eval_step_for(model)
    step.clear_cache()

    def compilations():
        with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles():
            caplog.clear()
            placed = evaluation.place_variables(variables)
            evaluation.evaluate_split(model, placed, clean_images, clean_labels, BATCH)
            evaluation.evaluate_cifar100c(model, placed, opened, BATCH)
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling ")]

    # 3 clean batches (the last one partial) and 15 corruption x severity sets: one compile of the step.
    first = compilations()
    steps = [message for message in first if message.startswith("Compiling jit(eval_step)")]
    assert len(steps) == 1 and step._cache_size() == 1, first
    assert f"uint8[{BATCH},32,32,3]" in steps[0]  # the uint8 batch is what goes to the device
    # Again, with the same shapes: nothing at all compiles.
    assert compilations() == []


# -------------------------------------------------------------------------------------------- command line


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = evaluate.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("form", ["pth", "checkpoint_dir"])
def test_cli_on_digits_agrees_with_the_pytorch_model(form, tmp_path, capsys):
    test = load_split("digits", "test")
    torch_model = spread_model(10, seed=5, images_uint8=test.images)
    checkpoint = tmp_path / "resnet8.pth"
    torch.save(torch_model.state_dict(), checkpoint)
    if form == "checkpoint_dir":
        checkpoint = save_model_checkpoint(tmp_path / "model", convert.torch_to_flax(checkpoint),
                                           {"arch": "resnet8", "num_classes": 10})
    out = tmp_path / "results" / "digits.json"
    code, stdout, err = run_cli(["--checkpoint", checkpoint, "--source", "digits", "--batch-size", BATCH,
                                 "--out", out], capsys)
    assert code == 0, err
    logits = torch_logits(torch_model, test.images)
    assert len(np.unique(logits.argmax(1))) > 1 and len(test) % BATCH != 0
    results = json.loads(out.read_text())
    assert results["arch"] == "resnet8" and results["num_classes"] == 10 and results["cifar100c"] is None
    assert_matches_reference(results["clean"], logits, test.labels)
    assert f"| digits test | {results['clean']['top1']:.2f} |" in stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["digits.json"]  # no temporary file left


@pytest.mark.parametrize("override", [None, "pytorch_kd"])
def test_cli_normalizes_with_the_training_runs_constants_unless_told(override, tmp_path, capsys):
    """A checkpoint whose run used RepDistiller's mean/std (its metadata says so) is evaluated with them, as
    PyTorch with those constants computes; `--normalization` overrides the metadata."""
    test = load_split("digits", "test")
    torch_model = spread_model(10, seed=6, images_uint8=test.images)
    checkpoint = save_model_checkpoint(tmp_path / "model", convert.torch_to_flax(torch_model.state_dict()),
                                       {"arch": "resnet8", "num_classes": 10, "normalization": "repdistiller"})
    out = tmp_path / "digits.json"
    code, printed, err = run_cli(["--checkpoint", checkpoint, "--source", "digits", "--batch-size", BATCH, "--out",
                                  out] + (["--normalization", override] if override else []), capsys)
    assert code == 0, err
    results = json.loads(out.read_text())
    assert results["normalization"] == (override or "repdistiller")
    assert f"10 classes; inputs normalized with the {override or 'repdistiller'} mean/std" in printed  # it is said
    mean_std = (MEAN, STD) if override == "pytorch_kd" else REPDISTILLER_MEAN_STD
    assert_matches_reference(results["clean"], torch_logits(torch_model, test.images, mean_std), test.labels)


def test_normalization_option_reads_pytorch_kds_old_spelling_seed_as_pytorch_kd():
    parse = lambda value: evaluate.build_parser().parse_args(["--checkpoint", "m", "--normalization", value])  # noqa: E731
    assert parse("seed").normalization == parse("pytorch_kd").normalization == "pytorch_kd"
    assert parse("repdistiller").normalization == "repdistiller"


def test_cli_with_cifar100c_reports_missing_corruptions_and_writes_every_number(model100, tmp_path, rng, capsys):
    torch_model, _, _ = model100
    checkpoint = tmp_path / "resnet8_100.pth"
    torch.save(torch_model.state_dict(), checkpoint)
    clean_images = random_images(rng, BATCH + 9)
    clean_logits = torch_logits(torch_model, clean_images)
    clean_labels = labels_half_right(rng, clean_logits, 100)
    data = write_cifar100_python(tmp_path / "cifar-100-python", clean_images, clean_labels)
    written = write_cifar100c(tmp_path / "CIFAR-100-C", torch_model, rng)
    out = tmp_path / "results.json"

    code, stdout, err = run_cli(["--checkpoint", checkpoint, "--source", "cifar100-python", "--data-dir", data,
                                 "--cifar100c", tmp_path / "CIFAR-100-C", "--batch-size", BATCH, "--out", out],
                                capsys)
    assert code == 0, err
    missing = [c for c in cifar100c.CORRUPTIONS if c not in written]
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and all(name in warnings[0] for name in missing)
    results = json.loads(out.read_text())
    assert_matches_reference(results["clean"], clean_logits, clean_labels)
    c100c = results["cifar100c"]
    assert c100c["missing"] == missing and c100c["evaluated"] == list(written)
    labels = np.load(tmp_path / "CIFAR-100-C" / "labels.npy")
    for corruption, images in written.items():
        for severity in range(1, 6):
            rows = slice((severity - 1) * BLOCK, severity * BLOCK)
            assert_matches_reference(c100c["corruptions"][corruption]["severities"][str(severity)],
                                     torch_logits(torch_model, images[rows]), labels[rows])
    # The table: clean, the mean over what was evaluated, then one row per corruption with its severities.
    assert f"| CIFAR-100-C mean (3 corruptions x 5 severities) | {c100c['top1']:.2f} |" in stdout
    fog = c100c["corruptions"]["fog"]
    assert ("| fog | " + " | ".join(f"{fog['severities'][str(s)]['top1']:.2f}" for s in range(1, 6))
            + f" | {fog['top1']:.2f} |") in stdout


@pytest.fixture
def pth10(tmp_path):
    path = tmp_path / "resnet8_10.pth"
    torch.save(randomized_torch_model("resnet8", 10, seed=1).state_dict(), path)
    return path


def test_missing_checkpoint(tmp_path, capsys):
    out = tmp_path / "r.json"
    code, stdout, err = run_cli(["--checkpoint", tmp_path / "nothing.pth", "--source", "digits", "--out", out], capsys)
    assert_one_line_error(code, stdout, err, "nothing.pth: no such file or checkpoint directory")
    assert list(tmp_path.iterdir()) == []


def test_class_count_mismatch(model100, tmp_path, capsys):
    torch_model, _, _ = model100
    checkpoint = tmp_path / "resnet8_100.pth"
    torch.save(torch_model.state_dict(), checkpoint)
    code, stdout, err = run_cli(["--checkpoint", checkpoint, "--source", "digits", "--out", tmp_path / "r.json"],
                                capsys)
    assert_one_line_error(code, stdout, err, "the model has 100 classes, but the digits test split has 10")
    assert [p.name for p in tmp_path.iterdir()] == ["resnet8_100.pth"]


def test_cifar100c_with_a_10_class_model(pth10, tmp_path, rng, capsys):
    write_cifar100c(tmp_path / "c", randomized_torch_model("resnet8", 100), rng, corruptions=("fog",))
    code, stdout, err = run_cli(["--checkpoint", pth10, "--source", "digits", "--cifar100c", tmp_path / "c",
                                 "--out", tmp_path / "r.json"], capsys)
    assert_one_line_error(code, stdout, err, "the model has 10 classes; CIFAR-100-C has 100")
    assert not (tmp_path / "r.json").exists()


def test_existing_out_is_kept_unless_force(pth10, tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text("earlier results\n")
    argv = ["--checkpoint", pth10, "--source", "digits", "--batch-size", BATCH, "--out", out]
    assert_one_line_error(*run_cli(argv, capsys), "r.json: already exists (pass --force to replace it)")
    assert out.read_text() == "earlier results\n"
    code, _, err = run_cli(argv + ["--force", "--quiet"], capsys)
    assert code == 0, err
    assert json.loads(out.read_text())["clean"]["count"] == 364
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "resnet8_10.pth"]


def test_out_under_a_file_is_refused_before_evaluating(pth10, tmp_path, capsys, monkeypatch):
    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before the output was checked")

    monkeypatch.setattr(evaluate, "evaluate_split", no_evaluation)
    (tmp_path / "notes.txt").write_text("kept\n")
    argv = ["--checkpoint", pth10, "--source", "digits", "--out", tmp_path / "notes.txt" / "r.json"]
    assert_one_line_error(*run_cli(argv, capsys), f"r.json: lies under {tmp_path / 'notes.txt'}, which is not a "
                                                  f"directory")
    assert (tmp_path / "notes.txt").read_text() == "kept\n"


def test_cifar100c_folder_without_any_corruption_file(tmp_path, capsys):
    (tmp_path / "c").mkdir()
    np.save(tmp_path / "c" / "labels.npy", np.zeros(5 * BLOCK, np.int64))
    torch.save(randomized_torch_model("resnet8", 100).state_dict(), tmp_path / "m.pth")
    code, stdout, err = run_cli(["--checkpoint", tmp_path / "m.pth", "--source", "digits", "--cifar100c",
                                 tmp_path / "c"], capsys)
    assert code == 2 and "has no readable corruption file" in err.splitlines()[-1]


# ------------------------------------------------------------------------------------------- several devices

EIGHT_DEVICES = """
import sys, jax, numpy as np
from jaxkd.engine import evaluation
from jaxkd.models import get_model
data = np.load(sys.argv[1], allow_pickle=True)
assert jax.device_count() == 8
model = get_model("resnet8", 10)
result = evaluation.evaluate_split(model, data["variables"].item(), data["images"], data["labels"], 20)
print(result["correct1"], result["correct5"], result["count"], evaluation.eval_step_for(model)._cache_size())
"""


def test_eight_devices_count_the_same_as_one(tmp_path, rng):
    """The batch is split over a `data` mesh axis (batch 20 is rounded up to 24, 3 per device)."""
    torch_model = spread_model(10, seed=7)
    images = random_images(rng, 3 * 24 + 5)
    labels = labels_half_right(rng, torch_logits(torch_model, images), 10)
    variables = convert.torch_to_flax(torch_model.state_dict())
    np.savez(tmp_path / "data.npz", images=images, labels=labels, variables=np.array(variables, dtype=object))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, str(tmp_path / "data.npz")], env=env,
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0, done.stderr
    one = evaluation.evaluate_split(get_model("resnet8", 10), variables, images, labels, 20)
    assert done.stdout.split() == [str(one["correct1"]), str(one["correct5"]), str(len(labels)), "1"]
