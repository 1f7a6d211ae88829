"""Converter API: both directions, both layouts, the wrapped / prefixed / GPU-saved files researchers hold."""

import argparse
import contextlib

import jax
import numpy as np
import pytest
import torch

import convert
from jaxkd.errors import UserError
from jaxkd.models import get_model
from jaxkd.pytorch.torch_models import get_torch_model
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.torch_references import nchw, randomized, randomized_torch_model
from tests.reference.repdistiller_wrn import WideResNet as RepDistillerWRN


def _assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
    for (path, x), (_, y) in zip(leaves_a, leaves_b):
        assert np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y), jax.tree_util.keystr(path)


def _jax_trained_variables(arch, num_classes, rng):
    """Variables as jaxkd would hold them after training: JAX init plus non-trivial BN state."""
    variables = get_model(arch, num_classes).init(jax.random.key(int(rng.integers(1 << 30))),
                                                  np.zeros((1, 32, 32, 3), np.float32))
    return jax.tree.map(lambda x: np.asarray(x) + rng.uniform(0.1, 0.5, x.shape).astype(np.float32), variables)


def test_export_loads_strictly_into_the_seed_model_with_the_same_logits(rng):
    variables = _jax_trained_variables("resnet20", 10, rng)
    state_dict = convert.flax_to_torch(variables, "resnet20", num_batches_tracked=7)
    torch_model = get_torch_model("resnet20", 10)
    torch_model.load_state_dict(state_dict, strict=True)
    assert list(state_dict) == list(torch_model.state_dict())  # the seed's key order
    assert state_dict["layer1.0.bn1.num_batches_tracked"].dtype == torch.int64
    assert int(state_dict["finalact.0.num_batches_tracked"]) == 7
    images = rng.standard_normal((4, 32, 32, 3), dtype=np.float32)
    with torch.no_grad():
        _, reference = torch_model.eval()(nchw(images))
    _, logits = get_model("resnet20", 10).apply(variables, images)
    assert_close_scaled(logits, reference.numpy(), 1e-5, "logits")


def test_import_of_export_is_bitwise_identity(rng):
    variables = _jax_trained_variables("wideresnet16_2", 100, rng)
    _assert_trees_equal(convert.torch_to_flax(convert.flax_to_torch(variables, "wrn16_2")), variables)


def test_export_of_import_gives_back_the_original_tensors(rng):
    original = randomized_torch_model("wideresnet16_1", seed=3).state_dict()
    imported = convert.import_torch(original)
    assert (imported.arch, imported.num_classes, imported.arch_inferred) == ("wideresnet16_1", 100, True)
    back = convert.flax_to_torch(imported.variables, imported.arch, num_batches_tracked=1000)
    assert list(back) == list(original)
    for key in original:
        assert torch.equal(back[key], original[key]), key


def test_repdistiller_layout_imports_with_its_logits_and_exports_back(rng):
    rd_model = randomized(lambda: RepDistillerWRN(16, 100, 2), seed=5).eval()
    imported = convert.import_torch(rd_model.state_dict())
    assert (imported.layout, imported.arch) == ("repdistiller", "wideresnet16_2")
    images = rng.standard_normal((4, 32, 32, 3), dtype=np.float32)
    with torch.no_grad():
        reference = rd_model(nchw(images)).numpy()
    _, logits = get_model("wrn16_2").apply(imported.variables, images)
    assert_close_scaled(logits, reference, 1e-5, "RepDistiller WRN logits")

    exported = convert.flax_to_torch(imported.variables, "wrn16_2", layout="repdistiller")
    fresh = RepDistillerWRN(16, 100, 2)
    fresh.load_state_dict(exported, strict=True)
    for key, tensor in rd_model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(exported[key], tensor), key


@pytest.mark.parametrize("wrapping", ["plain", "model", "state_dict", "dataparallel", "repdistiller_last"])
def test_files_as_researchers_hold_them(wrapping, tmp_path):
    state_dict = randomized_torch_model("resnet8", 10, seed=2).state_dict()
    if wrapping == "model":  # RepDistiller's ckpt_epoch_240.pth: CUDA-tensor accuracy beside the weights
        payload = {"epoch": 240, "model": state_dict, "accuracy": torch.tensor(61.1), "optimizer": {"state": {}}}
    elif wrapping == "state_dict":
        payload = {"state_dict": state_dict, "epoch": 3}
    elif wrapping == "dataparallel":
        payload = {f"module.{k}": v for k, v in state_dict.items()}
    elif wrapping == "repdistiller_last":  # {'opt': argparse.Namespace, 'model': ...}
        payload = {"opt": argparse.Namespace(model="resnet8", learning_rate=0.05), "model": state_dict}
    else:
        payload = state_dict
    path = tmp_path / "checkpoint.pth"
    torch.save(payload, path)
    _assert_trees_equal(convert.torch_to_flax(path), convert.torch_to_flax(state_dict))


@contextlib.contextmanager
def _saved_as_if_on_gpu():
    """Makes torch.save record 'cuda:0' as every storage's location, as a file written on a GPU does."""
    original = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        yield
    finally:
        torch.serialization.location_tag = original


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only load of a GPU-saved file")
def test_gpu_saved_file_loads_on_cpu(tmp_path):
    state_dict = randomized_torch_model("resnet8", 10, seed=4).state_dict()
    path = tmp_path / "gpu.pth"
    with _saved_as_if_on_gpu():
        torch.save(state_dict, path)
    with pytest.raises(RuntimeError, match="CUDA"):  # the file really asks for CUDA storage
        torch.load(path, weights_only=True)
    _assert_trees_equal(convert.torch_to_flax(path), convert.torch_to_flax(state_dict))


def test_explicit_arch_and_layout_checks():
    state_dict = randomized_torch_model("wideresnet40_1", 100).state_dict()
    assert convert.import_torch(state_dict, arch="wrn40_1", layout="pytorch-kd").arch == "wideresnet40_1"
    with pytest.raises(UserError, match="does not fit resnet20.*fit wideresnet40_1"):
        convert.import_torch(state_dict, arch="resnet20")
    with pytest.raises(UserError, match="layout repdistiller was asked for, but its keys are in the pytorch-kd layout"):
        convert.import_torch(state_dict, layout="repdistiller")


def test_damaged_repdistiller_file_names_its_closest_architecture():
    state_dict = get_torch_model("rd_resnet8", 10).state_dict()
    del state_dict["layer2.0.downsample.1.running_var"]
    with pytest.raises(UserError, match="fit none of jaxkd's architectures; the closest is rd_resnet8: missing "
                                        "keys: layer2.0.downsample.1.running_var$"):
        convert.import_torch(state_dict)
    with pytest.raises(UserError, match="no 'layer0.weight'.*first keys: a.weight"):
        convert.import_torch({"a.weight": torch.zeros(1)})
