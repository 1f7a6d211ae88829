"""RepDistiller's model zoo against the PyTorch references (`jaxkd.pytorch.torch_zoo`, `jaxkd.pytorch.torch_models`), one test
per architecture: every output of `forward` (stem, stage features and their pre-activation versions, pooled
vector, logits) in eval and train mode, the updated BN statistics, the parameter count, and the converter both
ways (import -> export bitwise, the export loading strictly into the reference); and the sizes table."""

import copy

import jax
import numpy as np
import pytest
import torch

import convert
from jaxkd.models import all_architectures, canonical_name, get_model
from jaxkd.models.__main__ import main as models_main
from jaxkd.models.summary import model_size
from jaxkd.pytorch.torch_models import REPDISTILLER_MODELS, get_torch_model
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.compile_once import jit_once
from tests.helpers.torch_references import nchw, nhwc, randomized_torch_model

REL = 1e-5  # max|diff| <= 1e-5 * max|ref|, float32 on both sides
# Train mode normalizes with the statistics of a small batch, which amplifies float32 rounding with depth:
# MobileNetV2's last stage differs from a float64 run by ~3e-5 of its scale in PyTorch float32 and in JAX alike.
# So train mode compares with PyTorch in float64: JAX (float32) must be within TRAIN_REL of it, or no farther from
# it than ROUNDING_FACTOR x PyTorch's own float32 result. A BN mistake (biased variance, another eps) is 1e-3 or
# more. (vgg19's third stage: JAX float32 1.4e-5 from float64 with jax/jaxlib 0.10.2, PyTorch float32 5.9e-6.)
TRAIN_REL = 3e-5
ROUNDING_FACTOR = 2.0
BATCH, CLASSES = 3, 10
# 32x32 inputs for every architecture: the references' fixed pooling windows are sized for CIFAR (the
# resnets' avg_pool2d(8), the ShuffleNets' avg_pool2d(4)), and at 16x16 the others' last stages are 1x1 or 2x2,
# where train-mode BN over a batch of 3 values amplifies float32 rounding past what these checks can tell
# from a mistake (ResNet50's pooled vector: 4e-4 of scale against PyTorch float64).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Parameter counts as the KD papers on RepDistiller's zoo list them (millions, 2 decimals, 100 classes): a check
# of the reference against numbers measured elsewhere. The exact counts asserted are the PyTorch reference's,
# whose state_dict keys and shapes are RepDistiller's.
PUBLISHED_MILLIONS = {"rd_resnet56": 0.86, "rd_resnet110": 1.74, "rd_resnet32x4": 7.43, "vgg13": 9.46,
                      "ResNet50": 23.71, "MobileNetV2": 0.81, "ShuffleV1": 0.95, "ShuffleV2": 1.36}


def _named_arrays(out) -> dict:
    """name -> NHWC / (B, C) numpy array of a ModelOutput or a TorchOutput."""
    as_array = lambda x: nhwc(x) if isinstance(x, torch.Tensor) and x.ndim == 4 else np.asarray(x)  # noqa: E731
    arrays = {"logits": out.logits, "pooled": out.pooled, "stem": out.stem}
    arrays.update({f"feature {i}": f for i, f in enumerate(out.features)})
    arrays.update({f"preact feature {i}": f for i, f in enumerate(out.preact_features)})
    return {name: as_array(value) for name, value in arrays.items()}


def assert_outputs_match(out, ref, rel: float, what: str):
    ours, theirs = _named_arrays(out), _named_arrays(ref)
    assert list(ours) == list(theirs), what
    for name in ours:
        assert_close_scaled(ours[name], theirs[name], rel, f"{what} {name}")


def assert_as_close_to_float64_as_pytorch(ours: dict, single: dict, exact: dict, what: str):
    """Each array of `ours` (JAX, float32) within TRAIN_REL of `exact` (PyTorch, float64), or no farther from it than
    ROUNDING_FACTOR x `single` (PyTorch, float32)."""
    assert list(ours) == list(exact), what
    for name in ours:
        scale = float(np.max(np.abs(exact[name])))
        pytorch_error = float(np.max(np.abs(single[name] - exact[name]))) / scale
        assert_close_scaled(ours[name], exact[name], max(TRAIN_REL, ROUNDING_FACTOR * pytorch_error),
                            f"{what} {name} (PyTorch float32: {pytorch_error:.2g})")


def _running_stats(reference) -> dict:
    """name -> array of every BN running statistic of a PyTorch model, as float64 numpy."""
    return {k: v.double().numpy() for k, v in reference.state_dict().items() if ".running_" in k}


def _load(arch: str, variables) -> torch.nn.Module:
    model = get_torch_model(arch, CLASSES)
    model.load_state_dict(convert.flax_to_torch(variables, arch), strict=True)
    return model


# The architectures without a family to share compiled ops with: their eval and train passes compile as one
# program, with XLA's backend optimization off (the program runs once), in a third of the time their ops take
# to compile one by one. The families (resnets, WideResNets, VGGs) run op by op: their layers share shapes, so
# each op compiles once for the whole family.
ONE_PROGRAM = ("ResNet50", "MobileNetV2", "ShuffleV1", "ShuffleV2")


def eval_and_train_forward(arch, variables, images):
    """(eval-mode ModelOutput, (train-mode ModelOutput, BN updates)) of `arch` on `images`."""
    model = get_model(arch, CLASSES)

    def both(variables, images):
        return (model.apply(variables, images, train=False, method=model.forward),
                model.apply(variables, images, train=True, method=model.forward, mutable=["batch_stats"]))

    return jit_once(both)(variables, images) if arch in ONE_PROGRAM else both(variables, images)


# RepDistiller's model_dict (its wrn_* are the seed's WideResNets, in the seed's layout here; the RepDistiller
# layout of those is tests/test_convert_roundtrip.py's), and the seed's resnet8 for its pre-activation resnets.
ZOO = [*REPDISTILLER_MODELS, "wideresnet16_1", "wideresnet16_2", "wideresnet40_1", "wideresnet40_2", "resnet8"]


@pytest.mark.parametrize("arch", ZOO)
def test_matches_the_pytorch_reference_and_converts_both_ways(arch, rng):
    reference = randomized_torch_model(arch, CLASSES, seed=int(rng.integers(1 << 30)))
    state_dict = {k: v.clone() for k, v in reference.state_dict().items()}
    imported = convert.import_torch(state_dict)  # the architecture detected from the keys and shapes
    assert (imported.arch, imported.num_classes, imported.layout) == (arch, CLASSES, convert.native_layout(arch))
    variables = imported.variables
    count = sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))
    assert count == sum(p.numel() for p in reference.parameters())
    if arch in PUBLISHED_MILLIONS:  # with 100 classes, as published: 90 more rows of the classifier
        classifier = [m for m in reference.modules() if isinstance(m, torch.nn.Linear)][-1]
        full = count + (100 - CLASSES) * (classifier.in_features + 1)
        assert round(full / 1e6, 2) == PUBLISHED_MILLIONS[arch]

    exported = convert.flax_to_torch(variables, arch)  # the architecture's own layout
    assert list(exported) == list(state_dict)  # PyTorch's key order
    for key, tensor in state_dict.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(exported[key], tensor), key
    get_torch_model(arch, CLASSES).load_state_dict(exported, strict=True)

    images = rng.standard_normal((BATCH, 32, 32, 3), dtype=np.float32)
    eval_out, (out, updates) = eval_and_train_forward(arch, variables, images)
    reference.eval()
    with torch.no_grad():
        expected = reference.forward_all(nchw(images))
    assert_outputs_match(eval_out, expected, REL, f"{arch} eval")

    reference64 = copy.deepcopy(reference).double().train()
    reference.train()
    with torch.no_grad():
        expected = reference.forward_all(nchw(images))
        exact = reference64.forward_all(nchw(images).double())
    assert_as_close_to_float64_as_pytorch(_named_arrays(out), _named_arrays(expected), _named_arrays(exact),
                                          f"{arch} train")
    updated = {**variables, "batch_stats": updates["batch_stats"]}
    ours = _running_stats(_load(arch, updated))
    assert_as_close_to_float64_as_pytorch(ours, _running_stats(reference), _running_stats(reference64),
                                          f"{arch} train BN update")


def test_names():
    assert canonical_name("resnet32x4") == "rd_resnet32x4" and canonical_name("RESNET8X4") == "rd_resnet8x4"
    assert canonical_name("resnet50") == "ResNet50" and canonical_name("mobile_half") == "MobileNetV2"
    assert canonical_name("vgg13_bn") == "vgg13" and canonical_name("shufflev1") == "ShuffleV1"
    assert canonical_name("wrn_40_2") == "wideresnet40_2"
    assert canonical_name("resnet56") == "resnet56"  # the seed's pre-activation resnet keeps its name
    assert canonical_name("rd_resnet56") == "rd_resnet56"


def torch_size(arch: str) -> tuple[int, int]:
    """(parameters, multiply-accumulates per 32x32 image) counted on the PyTorch reference with forward hooks."""
    model = get_torch_model(arch, 100).eval()
    macs = []

    def hook(module, inputs, output):  # each output value: one dot product over one output channel's weights
        macs.append(output[0].numel() * module.weight[0].numel())

    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            module.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    return sum(p.numel() for p in model.parameters()), sum(macs)


@pytest.mark.parametrize("arch", ["rd_resnet8x4", "MobileNetV2", "ShuffleV1", "vgg8", "wideresnet16_2"])
def test_model_size_counts_parameters_and_flops_as_pytorch(arch):
    size = model_size(arch)
    parameters, macs = torch_size(arch)
    assert size.parameters == parameters and size.gmacs == pytest.approx(macs / 1e9, rel=1e-12)


def test_size_command_lists_every_architecture(capsys):
    assert models_main([]) == 0
    table = capsys.readouterr().out
    for arch in all_architectures():
        assert f"| `{arch}` |" in table
    assert "| `rd_resnet32x4` | 7.43M | 1.083 |" in table  # 1.08 G, as the KD papers list it (as "FLOPs")
