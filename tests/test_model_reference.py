"""jaxkd.io.model_reference.open_model: one model opened the same from each reference a user may give (a `.pth`, a
model checkpoint directory, a training workdir), and one line for each reference that is none of them."""

import json

import pytest

from jaxkd.errors import UserError
from jaxkd.io.model_checkpoint import save_model_checkpoint
from jaxkd.io.model_reference import MODEL_CHECKPOINT, TORCH_FILE, WORKDIR, input_normalization, open_model
from jaxkd.pytorch.converter import import_torch
from tests.helpers.assertions import assert_bitwise_equal
from tests.helpers.runs import save_random_teacher


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """{kind: path} of one resnet8 (10 classes) as a .pth, a model checkpoint and a finished training workdir,
    and an unfinished workdir (config.json, no model/)."""
    root = tmp_path_factory.mktemp("references")
    pth = save_random_teacher(root / "resnet8.pth")
    variables = import_torch(pth).variables
    metadata = {"arch": "resnet8", "num_classes": 10, "normalization": "repdistiller"}
    save_model_checkpoint(root / "imported", variables, metadata)
    (root / "run").mkdir()
    (root / "run" / "config.json").write_text(json.dumps({"model": "resnet8"}))
    save_model_checkpoint(root / "run" / "model", variables, metadata)
    (root / "unfinished").mkdir()
    (root / "unfinished" / "config.json").write_text(json.dumps({"model": "resnet8"}))
    return {TORCH_FILE: pth, MODEL_CHECKPOINT: root / "imported", WORKDIR: root / "run",
            "unfinished": root / "unfinished", "root": root}


def test_each_reference_opens_the_same_model(references):
    opened = {kind: open_model(references[kind]) for kind in (TORCH_FILE, MODEL_CHECKPOINT, WORKDIR)}
    for kind, model in opened.items():
        assert (model.kind, model.arch, model.num_classes, model.model.num_classes) == (kind, "resnet8", 10, 10)
        assert_bitwise_equal(model.variables, opened[TORCH_FILE].variables)
    assert opened[WORKDIR].path == references[WORKDIR] / "model"
    assert opened[TORCH_FILE].metadata is None and opened[TORCH_FILE].normalization == "pytorch_kd"
    assert opened[MODEL_CHECKPOINT].normalization == "repdistiller"  # the run's, from its metadata


def test_a_model_exported_with_pytorch_kds_normalization_spelled_seed_reads_as_pytorch_kd():
    """Models exported before pytorch-kd's values were named "pytorch_kd" say "seed" in their metadata."""
    assert input_normalization({"normalization": "seed"}) == "pytorch_kd"
    assert input_normalization({"normalization": "repdistiller"}) == "repdistiller"
    assert input_normalization(None) == "pytorch_kd"


@pytest.mark.parametrize("reference, arch, message", [
    ("missing.pth", None, "missing.pth: no such file or checkpoint directory"),
    ("root", None, "references0: not a jaxkd model checkpoint (expected the 'variables' and 'metadata' items"),
    ("unfinished", None, "unfinished: a training workdir without its final model/ (written when the run ends"),
    (WORKDIR, "resnet20", "run/model: holds a resnet8, not a resnet20"),
    (TORCH_FILE, "wideresnet16_2", "does not fit wideresnet16_2 (its shapes fit resnet8)"),
])
def test_a_reference_that_is_no_model_is_one_line(references, reference, arch, message):
    path = references.get(reference, references["root"] / reference)
    with pytest.raises(UserError) as error:
        open_model(path, arch=arch)
    assert message in str(error.value) and "\n" not in str(error.value)
