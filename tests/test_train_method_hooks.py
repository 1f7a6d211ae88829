"""The engine's hooks for methods with extra classifiers and extra models (DML's peers, BYOT's heads):
`Method.eval_logits` is evaluated with the student and their ensemble, `Method.exports` is written out."""

import json

import numpy as np
import torch

import convert
from jaxkd import methods
from jaxkd.data import load_split, normalize
from jaxkd.engine.loop import train_and_evaluate
from jaxkd.io.model_checkpoint import load_model_checkpoint
from jaxkd.methods.base import Method, MethodInit
from jaxkd.models import get_model
from jaxkd.pytorch.torch_models import get_torch_model
from tests.helpers.runs import SMALL_DIGITS, small_config


class MirrorHeads(Method):
    """Extra classifiers whose accuracy is known without the engine: the student's logits, and the same with
    classes 0 and 1 swapped."""

    def eval_logits(self, variables, student, images):
        logits = student.logits
        swapped = logits.at[:, 0].set(logits[:, 1]).at[:, 1].set(logits[:, 0])
        return {"copy": logits, "swapped": swapped}


class TwinModel(Method):
    """Holds a second resnet8 as a method module (untrained: no term, only weight decay) and exports it."""

    def init(self, rng, probe):
        variables = get_model("resnet8", probe.num_classes).init(rng, probe.batch.images[:1])
        return MethodInit(dict(variables))

    def exports(self, variables):
        return {"twin": ("resnet8", variables)}


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_extra_classifiers_are_evaluated_with_their_ensemble(tmp_path, monkeypatch):
    monkeypatch.setitem(methods.METHODS, "mirror", MirrorHeads)
    config = small_config(epochs=1)
    config.method = "mirror"
    train_and_evaluate(config, tmp_path)
    evaluation = next(r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
                      if r["kind"] == "eval")

    test = load_split("digits", "test", digits_size=SMALL_DIGITS)  # independent recomputation from the exported student
    _, logits = get_model("resnet8", 10).apply(load_model_checkpoint(tmp_path / "model")[0], normalize(test.images))
    logits = np.asarray(logits)
    swapped = logits[:, [1, 0] + list(range(2, 10))]
    accuracy = lambda z: 100.0 * np.mean(z.argmax(1) == test.labels)
    assert evaluation["top1"] == evaluation["copy_top1"] == accuracy(logits)
    assert evaluation["swapped_top1"] == accuracy(swapped)
    assert evaluation["ensemble_top1"] == accuracy((2 * _softmax(logits) + _softmax(swapped)) / 3)


def test_extra_models_are_exported_as_pth_and_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(methods.METHODS, "twin", TwinModel)
    config = small_config(epochs=1)
    config.method = "twin"
    train_and_evaluate(config, tmp_path)
    variables, metadata = load_model_checkpoint(tmp_path / "twin")
    assert metadata["arch"] == "resnet8" and metadata["method"] == "twin"
    state_dict = torch.load(tmp_path / "twin.pth", weights_only=True)
    get_torch_model("resnet8", 10).load_state_dict(state_dict, strict=True)
    for key, tensor in convert.flax_to_torch(variables, "resnet8").items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(state_dict[key], tensor), key
    # It is the method's module, not the student: different weights.
    student = load_model_checkpoint(tmp_path / "model")[0]
    assert not np.allclose(variables["params"]["layer0"]["kernel"], student["params"]["layer0"]["kernel"])
