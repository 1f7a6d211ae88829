"""torchvision's and mdistiller's ImageNet files through the converter: written the way their users write them
(`torch.save(model.state_dict())` for torchvision's `resnet34-b627a593.pth`-style files, also wrapped under
'state_dict' or 'model' with DataParallel's `module.` prefix; mdistiller's `student_best`, `{'model': ...}`),
imported without an architecture, exported back to files the upstream classes load strictly, bitwise, with
`--verify`; evaluated by `jaxkd.tools.evaluate`. And the PyTorch references `--verify` uses (`convert/torch_zoo`)
against torchvision's own classes. Random weights; no network."""

import json

import jax
import numpy as np
import pytest
import torch

import convert
from convert.__main__ import main as convert_main
from jaxkd import evaluate
from jaxkd.data.sources import load_split
from jaxkd.io.model_checkpoint import load_model_checkpoint
from jaxkd.pytorch.torch_models import get_torch_model
from tests.helpers.torch_references import nchw, randomized
from tests.helpers.torchvision_modules import load_torchvision_module
from tests.reference.mdistiller_mobilenetv1 import MobileNetV1 as MdistillerMobileNetV1

CLASSES = 10  # digits, for the evaluation
pytestmark = pytest.mark.usefixtures("one_torch_thread")
TORCHVISION = {"tv_resnet18": "resnet18", "tv_resnet34": "resnet34", "tv_resnet50": "resnet50",
               "tv_resnet101": "resnet101", "tv_resnet152": "resnet152", "tv_wide_resnet50_2": "wide_resnet50_2",
               "tv_mobilenet_v2": "mobilenet_v2"}
# torchvision's ImageNet mean and std: what `jaxkd.evaluate` normalizes a torchvision-format file's inputs with
MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


def torchvision_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """torchvision's own class for `arch` (jaxkd's name), random weights and BN statistics."""
    module = load_torchvision_module("models.mobilenetv2" if "mobilenet" in arch else "models.resnet")
    return randomized(lambda: getattr(module, TORCHVISION[arch])(num_classes=CLASSES), seed).eval()


def mdistiller_mobilenetv1(seed: int = 0) -> torch.nn.Module:
    return randomized(lambda: MdistillerMobileNetV1(num_classes=CLASSES), seed).eval()


def assert_same_tensors(loaded: dict, source: dict):
    assert list(loaded) == list(source)
    for key, tensor in source.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded[key], tensor), key


def assert_reference_computes_upstream_logits(reference: torch.nn.Module, upstream: torch.nn.Module):
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, ours = upstream(images), reference.eval()(images)
    assert float((ours - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


@pytest.mark.parametrize("arch", ["tv_resnet101", "tv_resnet152", "tv_wide_resnet50_2"])
def test_deeper_and_wider_torchvision_resnets_import_and_export_bitwise(arch):
    """ResNet-101, -152 and Wide ResNet-50-2, whose forward passes tests/test_imagenet_models.py leaves to
    ResNet-50: inferred from the keys, parameter count (torchvision's documented one for Wide ResNet-50-2), bitwise export in torchvision's key order, strict loads into torchvision's
    class and into `convert/torch_zoo`'s reference (what `--verify` compares JAX with), which computes
    torchvision's logits."""
    upstream = torchvision_model(arch)
    state_dict = upstream.state_dict()
    imported = convert.import_torch(state_dict)
    assert (imported.arch, imported.num_classes, imported.layout) == (arch, CLASSES, "torchvision")
    count = sum(int(leaf.size) for leaf in jax.tree.leaves(imported.variables["params"]))
    assert count == sum(p.numel() for p in upstream.parameters())
    if arch == "tv_wide_resnet50_2":  # torchvision's documented 68,883,240 with 1000 classes
        assert count + (1000 - CLASSES) * (2048 + 1) == 68_883_240
    exported = convert.flax_to_torch(imported.variables, arch)
    assert_same_tensors(exported, state_dict)
    upstream.load_state_dict(exported, strict=True)
    reference = get_torch_model(arch, CLASSES)
    reference.load_state_dict(exported, strict=True)
    assert_reference_computes_upstream_logits(reference, upstream)


@pytest.mark.parametrize("arch", ["tv_resnet18", "tv_resnet50", "tv_mobilenet_v2"])
def test_verify_reference_loads_torchvision_state_dicts_and_computes_its_logits(arch):
    """`convert/torch_zoo`'s transcriptions of torchvision's code (`--verify`'s reference) against torchvision's
    classes: each block type and MobileNetV2 (ResNet-34's blocks are ResNet-18's; the deeper and wider ResNets:
    above)."""
    upstream = torchvision_model(arch)
    reference = get_torch_model(arch, CLASSES)
    reference.load_state_dict(upstream.state_dict(), strict=True)
    assert list(reference.state_dict()) == list(upstream.state_dict())
    assert_reference_computes_upstream_logits(reference, upstream)


def test_mdistiller_reference_matches_the_transcription_of_mdistillers_code():
    """`convert/torch_zoo`'s MobileNetV1 (`--verify`'s reference) loads mdistiller's keys strictly and computes
    its logits and features."""
    upstream = mdistiller_mobilenetv1()
    reference = get_torch_model("MobileNetV1", CLASSES).eval()
    reference.load_state_dict(upstream.state_dict(), strict=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, feats = upstream(images, is_feat=True)
        ours = reference.forward_all(images)
    torch.testing.assert_close(ours.logits, logits, rtol=0, atol=1e-5 * float(logits.abs().max()))
    for mine, theirs in zip(ours.preact_features + ours.features + [ours.pooled],
                            feats["preact_feats"] + feats["feats"] + [feats["pooled_feat"]], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5 * float(theirs.abs().max()))


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """torchvision's ResNet-18 saved as torchvision's released files are: its bare state_dict."""
    path = tmp_path_factory.mktemp("torchvision") / "resnet18-f37072fd.pth"
    torch.save(torchvision_model("tv_resnet18").state_dict(), path)
    return path


def test_torchvision_file_imports_without_arch_and_exports_a_file_torchvision_loads_strictly(
        resnet18_file, tmp_path, capsys):
    assert convert_main(["import", str(resnet18_file), "--out", str(tmp_path / "imported")]) == 0
    out = capsys.readouterr().out
    assert "(torchvision layout): tv_resnet18 (inferred from the tensor shapes), 10 classes" in out
    _, metadata = load_model_checkpoint(tmp_path / "imported")
    assert (metadata["arch"], metadata["source_layout"]) == ("tv_resnet18", "torchvision")
    exported = tmp_path / "resnet18_jax.pth"
    assert convert_main(["export", str(tmp_path / "imported"), "--out", str(exported), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "verify: strict load into the PyTorch tv_resnet18 ok" in out and "torchvision layout" in out
    loaded = torch.load(exported, weights_only=True)  # a bare state_dict, as torchvision's files
    torchvision_model("tv_resnet18", seed=1).load_state_dict(loaded, strict=True)
    assert_same_tensors(loaded, torch.load(resnet18_file, weights_only=True))


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_torchvision_state_dict_with_dataparallel_prefixes_imports_the_same(resnet18_file, wrapper,
                                                                                   tmp_path):
    plain = torch.load(resnet18_file, weights_only=True)
    wrapped = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 90, wrapper: {f"module.{key}": value for key, value in plain.items()}}, wrapped)
    imported, expected = convert.import_torch(wrapped), convert.import_torch(resnet18_file)
    assert (imported.arch, imported.arch_inferred, imported.layout) == ("tv_resnet18", True, "torchvision")
    jax.tree.map(np.testing.assert_array_equal, imported.variables, expected.variables)


def test_mdistiller_student_file_imports_without_arch_and_exports_for_mdistiller(tmp_path, capsys):
    src = tmp_path / "student_best"
    upstream = mdistiller_mobilenetv1()
    torch.save({"model": upstream.state_dict()}, src)  # mdistiller's trainer: student_state = {"model": ...}
    assert convert_main(["import", str(src), "--out", str(tmp_path / "imported")]) == 0
    assert "MobileNetV1 (inferred from the tensor shapes)" in capsys.readouterr().out
    exported = tmp_path / "student.pth"
    assert convert_main(["export", str(tmp_path / "imported"), "--out", str(exported), "--verify"]) == 0
    assert "under 'model' as mdistiller saves a student" in capsys.readouterr().out
    loaded = torch.load(exported, weights_only=True)["model"]
    mdistiller_mobilenetv1(seed=1).load_state_dict(loaded, strict=True)
    assert_same_tensors(loaded, upstream.state_dict())


def test_evaluate_accepts_a_torchvision_file(resnet18_file, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert evaluate.main(["--checkpoint", str(resnet18_file), "--source", "digits", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    results = json.loads(out.read_text())
    assert (results["arch"], results["num_classes"], results["normalization"]) == ("tv_resnet18", CLASSES, "imagenet")
    test = load_split("digits", "test")
    images = (nchw(test.images).float() / 255 - MEAN[:, None, None]) / STD[:, None, None]
    with torch.no_grad():
        logits = torchvision_model("tv_resnet18")(images).numpy()
    order = np.sort(logits, axis=1)
    clear = order[:, -1] - order[:, -2] > 1e-4 * np.abs(logits).max()  # not a near tie between frameworks
    assert results["clean"]["count"] == len(test.labels)
    assert abs(results["clean"]["correct1"] - int(np.sum(logits.argmax(1) == test.labels))) <= int(np.sum(~clear))


def test_torchvision_file_missing_a_tensor_names_the_closest_architecture(resnet18_file, tmp_path, capsys):
    state_dict = torch.load(resnet18_file, weights_only=True)
    del state_dict["layer4.1.bn2.weight"]
    src = tmp_path / "resnet18.pth"
    torch.save(state_dict, src)
    assert convert_main(["import", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "the closest is tv_resnet18: missing keys: layer4.1.bn2.weight" in err
    assert not (tmp_path / "out").exists()


def test_the_command_line_offers_every_layout_of_the_converter():
    from convert import __main__ as command_line
    from jaxkd.pytorch.layout import LAYOUTS

    assert command_line.LAYOUTS == LAYOUTS  # the command line's copy, kept to start without importing JAX
