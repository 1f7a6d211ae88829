"""`python -m convert import/export`: outputs, metadata, and every bad input (clear message, exit 2, nothing
written)."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import convert
from convert.__main__ import main
from jaxkd.errors import UserError
from jaxkd.io.model_checkpoint import load_model_checkpoint
from jaxkd.io.model_reference import open_model
from jaxkd.pytorch.torch_models import get_torch_model
from tests.helpers.torch_references import randomized_torch_model

REPO = Path(__file__).resolve().parents[1]


class Unsafe:
    """A pickle payload: unpickling it calls `Path.touch` on `marker` (any callable the file names would run
    the same way), so whether a loader ran it shows on disk."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture
def seed_pth(tmp_path):
    path = tmp_path / "resnet8.pth"
    torch.save(randomized_torch_model("resnet8", 10, seed=1).state_dict(), path)
    return path


def _run_error(argv, capsys):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def _listing(directory):
    return sorted(p.name for p in Path(directory).iterdir())


def test_import_writes_variables_and_metadata(seed_pth, tmp_path, capsys):
    out = tmp_path / "imported"
    assert main(["import", str(seed_pth), "--out", str(out)]) == 0
    assert "resnet8 (inferred from the tensor shapes), 10 classes" in capsys.readouterr().out
    variables, metadata = load_model_checkpoint(out)
    assert metadata["arch"] == "resnet8" and metadata["num_classes"] == 10
    assert metadata["source_sha256"] == hashlib.sha256(seed_pth.read_bytes()).hexdigest()
    assert metadata["source"] == str(seed_pth.absolute()) and metadata["source_layout"] == "pytorch-kd"
    expected = convert.torch_to_flax(seed_pth)
    kernel = ("params", "layer1_0", "conv1", "kernel")
    np.testing.assert_array_equal(variables[kernel[0]][kernel[1]][kernel[2]][kernel[3]],
                                  expected[kernel[0]][kernel[1]][kernel[2]][kernel[3]])


def test_export_with_verify_loads_strictly_in_the_seed_model(seed_pth, tmp_path, capsys):
    model_dir, out = tmp_path / "imported", tmp_path / "exported.pth"
    assert main(["import", str(seed_pth), "--out", str(model_dir)]) == 0
    assert main(["export", str(model_dir), "--out", str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "strict load into the PyTorch resnet8 ok" in printed and "max |diff| = " in printed
    exported = torch.load(out, weights_only=True)
    model = get_torch_model("resnet8", 10)
    model.load_state_dict(exported, strict=True)
    original = torch.load(seed_pth, weights_only=True)
    for key, tensor in original.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(exported[key], tensor), key
    assert _listing(tmp_path) == ["exported.pth", "imported", "resnet8.pth"]  # no temporary files left


def test_force_replaces_existing_outputs(seed_pth, tmp_path, capsys):
    model_dir, out = tmp_path / "imported", tmp_path / "exported.pth"
    out.write_bytes(b"old")
    model_dir.mkdir()
    assert main(["import", str(seed_pth), "--out", str(model_dir), "--force"]) == 0
    assert main(["export", str(model_dir), "--out", str(out), "--force"]) == 0
    assert load_model_checkpoint(model_dir)[1]["arch"] == "resnet8"
    assert "linear.weight" in torch.load(out, weights_only=True)


def _edit_state_dict(edit, path):
    state_dict = randomized_torch_model("resnet8", 10).state_dict()
    edit(state_dict)
    torch.save(state_dict, path)


def _bad_input(name, tmp_path):
    """Writes the bad input called `name` into tmp_path; returns (argv before --out, expected message)."""
    src = tmp_path / "bad.pth"
    if name == "missing_file":
        return ["import", tmp_path / "nope.pth"], "nope.pth: no such file"
    if name == "not_a_checkpoint":
        src.write_text("hello, I am a text file\n")
        return ["import", src], "not a PyTorch checkpoint"
    if name == "truncated":
        torch.save(randomized_torch_model("resnet8", 10).state_dict(), src)
        src.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
        return ["import", src], "not a readable PyTorch checkpoint"
    if name == "not_a_state_dict":
        torch.save([1, 2, 3], src)
        return ["import", src], "expected a state_dict (a mapping of names to tensors), found list"
    if name == "pickled_object":
        marker = tmp_path / "payload_ran"
        torch.save({"model": randomized_torch_model("resnet8", 10).state_dict(), "extra": Unsafe(marker)}, src)
        torch.load(src, weights_only=False)  # the payload is real: a full unpickling runs it
        assert marker.exists()
        marker.unlink()
        return ["import", src], "refused, it holds pickled Python objects"
    if name == "missing_keys":
        _edit_state_dict(lambda sd: [sd.pop(k) for k in ("layer2.0.conv2.weight", "finalact.0.bias")], src)
        return ["import", src, "--arch", "resnet8"], "missing keys: layer2.0.conv2.weight, finalact.0.bias"
    if name == "unexpected_keys":
        _edit_state_dict(lambda sd: sd.update({"extra.head.weight": torch.zeros(3)}), src)
        return ["import", src, "--arch", "resnet8"], "unexpected keys: extra.head.weight"
    if name == "shape_mismatch":
        _edit_state_dict(lambda sd: sd.update({"layer3.0.conv1.weight": torch.zeros(64, 32, 1, 1)}), src)
        return ["import", src], "layer3.0.conv1.weight is (64, 32, 1, 1), resnet8 expects (64, 32, 3, 3)"
    if name == "wrong_arch":
        torch.save(randomized_torch_model("resnet8", 10).state_dict(), src)
        return ["import", src, "--arch", "wideresnet16_2"], "does not fit wideresnet16_2 (its shapes fit resnet8)"
    if name == "unknown_arch":
        torch.save(randomized_torch_model("resnet8", 10).state_dict(), src)
        return ["import", src, "--arch", "resnet110"], "unknown model 'resnet110'"
    if name == "export_not_a_checkpoint":
        (tmp_path / "empty_dir").mkdir()
        return ["export", tmp_path / "empty_dir"], "not a jaxkd model checkpoint"
    raise ValueError(name)


BAD_INPUTS = ["missing_file", "not_a_checkpoint", "truncated", "not_a_state_dict", "pickled_object", "missing_keys",
              "unexpected_keys", "shape_mismatch", "wrong_arch", "unknown_arch", "export_not_a_checkpoint"]


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_one_clear_line_and_writes_nothing(name, tmp_path, capsys):
    argv, expected = _bad_input(name, tmp_path)
    before = _listing(tmp_path)
    out = tmp_path / ("out.pth" if argv[0] == "export" else "out")
    err = _run_error(argv + ["--out", out], capsys)
    assert expected in err
    assert _listing(tmp_path) == before  # nothing written, and a pickle payload never ran (no payload_ran)
    if name == "pickled_object":  # the loader behind evaluate and a run's teacher refuses it too, without running it
        with pytest.raises(UserError, match="refused, it holds pickled Python objects"):
            open_model(argv[1])
        assert _listing(tmp_path) == before


@pytest.mark.parametrize("command", ["import", "export"])
def test_existing_output_is_refused_and_kept(command, seed_pth, tmp_path, capsys):
    src = seed_pth
    if command == "export":
        src = tmp_path / "model"
        assert main(["import", str(seed_pth), "--out", str(src)]) == 0
    out = tmp_path / "existing"
    out.mkdir() if command == "import" else out.write_bytes(b"keep me")
    (out / "precious.txt").write_text("keep me") if command == "import" else None
    before = _listing(tmp_path)
    err = _run_error([command, src, "--out", out], capsys)
    assert "already exists (pass --force to replace it)" in err
    assert _listing(tmp_path) == before
    assert (out / "precious.txt").read_text() == "keep me" if command == "import" else out.read_bytes() == b"keep me"


@pytest.mark.parametrize("command", ["import", "export"])
def test_output_under_a_file_is_refused_before_reading(command, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("kept")
    # The source does not exist either: the output is checked first, so its error is the one reported.
    err = _run_error([command, tmp_path / "missing", "--out", tmp_path / "notes.txt" / "out"], capsys)
    assert f"lies under {tmp_path / 'notes.txt'}, which is not a directory" in err
    assert (tmp_path / "notes.txt").read_text() == "kept"


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "convert", "import", str(tmp_path / "missing.pth"),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'missing.pth'}: no such file"
    assert not (tmp_path / "out").exists()


def test_export_takes_a_training_workdirs_model(seed_pth, tmp_path, capsys):
    """A training workdir (config.json, model/) exports its final model, as evaluate and teachers take it; before,
    export said "a training workdir without its final model/" although model/ was there."""
    from jaxkd.io.model_checkpoint import save_model_checkpoint

    workdir, out = tmp_path / "teacher", tmp_path / "teacher.pth"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"model": "resnet8"}')
    save_model_checkpoint(workdir / "model", convert.torch_to_flax(seed_pth),
                          {"arch": "resnet8", "num_classes": 10, "written_by": "jaxkd.train"})
    assert main(["export", str(workdir), "--out", str(out)]) == 0
    assert "(pytorch-kd layout, resnet8," in capsys.readouterr().out
    get_torch_model("resnet8", 10).load_state_dict(torch.load(out, weights_only=True), strict=True)


def test_an_imported_model_exports_in_the_layout_it_came_from(tmp_path, capsys):
    """A WRN from a RepDistiller file (its key names, under 'model') exports back in RepDistiller's layout without
    --layout, so that RepDistiller's strict load takes it; --layout still chooses."""
    from tests.reference.repdistiller_wrn import WideResNet as RepDistillerWRN

    torch.manual_seed(3)
    original = RepDistillerWRN(16, 10, 1)
    torch.save({"model": original.state_dict(), "epoch": 240}, tmp_path / "wrn_16_1.pth")
    assert main(["import", str(tmp_path / "wrn_16_1.pth"), "--out", str(tmp_path / "imported")]) == 0
    assert main(["export", str(tmp_path / "imported"), "--out", str(tmp_path / "back.pth")]) == 0
    assert "(repdistiller layout, the layout it was imported from" in capsys.readouterr().out
    RepDistillerWRN(16, 10, 1).load_state_dict(torch.load(tmp_path / "back.pth", weights_only=True)["model"],
                                               strict=True)
    assert main(["export", str(tmp_path / "imported"), "--out", str(tmp_path / "seed.pth"), "--layout",
                 "pytorch-kd"]) == 0
    get_torch_model("wrn16_1", 10).load_state_dict(torch.load(tmp_path / "seed.pth", weights_only=True), strict=True)


def _damaged_pth(damage: str, path: Path) -> str:
    """Writes a real resnet8 state_dict with torch.save to `path`, then damages it; returns what the error must
    name: bytes flipped inside the largest tensor's data member (same size, zip format), the file cut in half
    (zip, and the legacy pickle format), the largest data member rewritten shorter than its tensor (a zip whose
    CRCs hold)."""
    import struct
    import zipfile

    legacy = damage == "truncated_legacy"
    torch.save(randomized_torch_model("resnet8", 10).state_dict(), path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    if damage.startswith("truncated"):
        path.write_bytes(data[: len(data) // 2])
        return ("the legacy (pickle) format does not unpickle completely" if legacy else
                "its zip archive is incomplete")
    with zipfile.ZipFile(path) as archive:
        largest = max((info for info in archive.infolist() if "/data/" in info.filename), key=lambda i: i.file_size)
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    if damage == "flipped":
        name_length, extra_length = struct.unpack("<HH", data[largest.header_offset + 26:largest.header_offset + 30])
        start = largest.header_offset + 30 + name_length + extra_length  # the member's bytes (stored, not compressed)
        flipped = bytearray(data)
        for offset in range(start + largest.file_size // 2, start + largest.file_size // 2 + 4):
            flipped[offset] ^= 0xFF
        path.write_bytes(bytes(flipped))
        return f"member {largest.filename} fails its CRC-32 check"
    with zipfile.ZipFile(path, "w") as archive:  # "short": every member rewritten, the largest cut to half
        for name, content in members.items():
            archive.writestr(name, content[: len(content) // 2] if name == largest.filename else content)
    return f"damaged: member {largest.filename} holds {largest.file_size // 2} bytes, its tensor needs {largest.file_size}"


@pytest.mark.parametrize("damage", ["flipped", "truncated_zip", "truncated_legacy", "short"])
def test_a_damaged_pth_is_one_line_naming_the_file_and_the_damage_wherever_it_is_read(damage, tmp_path, capsys):
    """A .pth damaged after torch.save wrote it (a bad download or copy) is refused before use by `convert import`
    and by the loader behind `jaxkd.tools.evaluate` and a run's teacher, in one line naming the file and the damaged
    member; nothing is written. (Before, flipped bytes inside a data member imported without a word.)"""
    src = tmp_path / "damaged.pth"
    expected = _damaged_pth(damage, src)
    before = _listing(tmp_path)
    err = _run_error(["import", src, "--out", tmp_path / "out"], capsys)
    assert err.startswith(f"error: {src}: ") and expected in err, err
    assert _listing(tmp_path) == before
    with pytest.raises(UserError, match=re.escape(expected)):
        open_model(src)
