"""RepDistiller's released teachers' architectures, as files written the way its `train_teacher.py` writes them
(`{'epoch', 'model': state_dict, 'accuracy', 'optimizer'}`, random weights from the PyTorch reference): imported
without an architecture, through `python -m convert` and `python -m jaxkd.evaluate`; wrong or damaged files are
one error line."""

import json

import numpy as np
import pytest
import torch

from convert.__main__ import main as convert_main
from jaxkd.data.sources import load_split
from jaxkd.io.model_checkpoint import load_model_checkpoint
from jaxkd.pytorch.torch_models import get_torch_model
from jaxkd.tools import evaluate
from tests.helpers.torch_references import nchw
from tests.reference.repdistiller_wrn import WideResNet

CLASSES = 10  # digits, for the evaluation
pytestmark = pytest.mark.usefixtures("one_torch_thread")
# The six files of RepDistiller's scripts/fetch_pretrained_teachers.sh: its model name -> jaxkd's name.
RELEASED_TEACHERS = {"wrn_40_2": "wideresnet40_2", "resnet56": "rd_resnet56", "resnet110": "rd_resnet110",
                     "resnet32x4": "rd_resnet32x4", "vgg13": "vgg13", "ResNet50": "ResNet50"}
# CIFAR-100's per-channel mean and std on 0..255, which jaxkd's data pipeline normalizes with.
MEAN = torch.tensor([129.3, 124.07, 112.43]) / 255
STD = torch.tensor([68.17, 65.39, 70.42]) / 255


def repdistiller_model(name: str) -> torch.nn.Module:
    """RepDistiller's architecture `name` with its own state_dict keys (its WideResNet from tests/reference)."""
    torch.manual_seed(0)
    if name.startswith("wrn_"):
        depth, width = (int(v) for v in name[len("wrn_"):].split("_"))
        return WideResNet(depth, CLASSES, width)
    return get_torch_model(RELEASED_TEACHERS[name], CLASSES)


def save_like_train_teacher(model: torch.nn.Module, path):
    """`torch.save(state, 'ckpt_epoch_240.pth')` as RepDistiller's train_teacher.py does at epoch 240."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    state = {"epoch": 240, "model": model.state_dict(), "accuracy": torch.tensor(73.26),
             "optimizer": optimizer.state_dict()}
    torch.save(state, path)
    return path


@pytest.mark.parametrize("name", list(RELEASED_TEACHERS))
def test_released_teacher_file_imports_without_an_architecture(name, tmp_path, capsys):
    src = save_like_train_teacher(repdistiller_model(name), tmp_path / "ckpt_epoch_240.pth")
    assert convert_main(["import", str(src), "--out", str(tmp_path / "imported")]) == 0
    assert f"{RELEASED_TEACHERS[name]} (inferred from the tensor shapes)" in capsys.readouterr().out
    variables, metadata = load_model_checkpoint(tmp_path / "imported")
    assert (metadata["arch"], metadata["num_classes"], metadata["source_layout"]) == (
        RELEASED_TEACHERS[name], CLASSES, "repdistiller")
    # Back to RepDistiller's layout and file: its train_student.py `load_teacher` (transcribed: build the model,
    # then `model.load_state_dict(torch.load(model_path)['model'])`, strict) loads it. `--verify` (a JAX forward
    # pass against PyTorch's) for the WideResNet, whose export renames the seed's keys onto RepDistiller's; the
    # others' outputs are tests/test_model_zoo.py's.
    out = tmp_path / "exported.pth"
    verify = name.startswith("wrn_")
    argv = ["export", str(tmp_path / "imported"), "--out", str(out), "--layout", "repdistiller"]
    assert convert_main(argv + ["--verify"] * verify) == 0
    assert ("verify: strict load" in capsys.readouterr().out) == verify
    reference = repdistiller_model(name)
    reference.load_state_dict(torch.load(out, weights_only=True)["model"])
    for key, tensor in torch.load(src, weights_only=True)["model"].items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(reference.state_dict()[key], tensor), key


def test_evaluate_accepts_a_repdistiller_teacher_file(tmp_path, capsys):
    model = repdistiller_model("vgg13").eval()
    src = save_like_train_teacher(model, tmp_path / "ckpt_epoch_240.pth")
    out = tmp_path / "results.json"
    assert evaluate.main(["--checkpoint", str(src), "--source", "digits", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    results = json.loads(out.read_text())
    assert (results["arch"], results["num_classes"]) == ("vgg13", CLASSES)
    test = load_split("digits", "test")
    images = (nchw(test.images).float() / 255 - MEAN[:, None, None]) / STD[:, None, None]
    with torch.no_grad():
        logits = model(images).numpy()
    order = np.sort(logits, axis=1)
    clear = order[:, -1] - order[:, -2] > 1e-4 * np.abs(logits).max()  # not a near tie between frameworks
    expected = int(np.sum(logits.argmax(1) == test.labels))
    assert results["clean"]["count"] == len(test.labels)
    assert abs(results["clean"]["correct1"] - expected) <= int(np.sum(~clear))


@pytest.mark.parametrize("damage", ["wrong_arch", "missing_key", "truncated"])
def test_wrong_or_damaged_teacher_file_is_one_error_line_and_writes_nothing(damage, tmp_path, capsys):
    model = repdistiller_model("resnet56")
    src = tmp_path / "ckpt_epoch_240.pth"
    argv = ["import", str(src), "--out", str(tmp_path / "out")]
    if damage == "wrong_arch":
        save_like_train_teacher(model, src)
        argv += ["--arch", "resnet32x4"]
        expected = "does not fit rd_resnet32x4 (its shapes fit rd_resnet56): missing keys: layer1.0.downsample.0.weight"
    elif damage == "missing_key":
        state_dict = model.state_dict()
        del state_dict["layer3.8.bn2.weight"]
        torch.save({"epoch": 240, "model": state_dict}, src)
        expected = "the closest is rd_resnet56: missing keys: layer3.8.bn2.weight"
    else:
        save_like_train_teacher(model, src)
        src.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
        expected = "not a readable PyTorch checkpoint"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert convert_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
