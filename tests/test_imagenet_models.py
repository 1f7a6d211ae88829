"""The ImageNet architectures (`tv_resnet*`, `tv_wide_resnet50_2`, `tv_mobilenet_v2`, `MobileNetV1`) against the
real upstream code: torchvision's own model classes (`torchvision/models/resnet.py`, `mobilenetv2.py`, loaded
without its C extension) and a transcription of mdistiller's MobileNetV1 (tests/reference). Weights go from the
upstream model through the converter (architecture inferred); then every output (stem, stage features and their
pre-activation versions, pooled vector, logits) in eval and train mode and the BN statistics after the train-mode
pass, within the zoo's margins (tests/test_model_zoo.py), at 64x64 inputs (ImageNet's networks take any size;
the last maps are 2x2); parameter counts; export -> the upstream class loads it strictly, bitwise equal.

ResNet-101 and -152 are ResNet-50 with more bottlenecks per stage, Wide ResNet-50-2 is ResNet-50 with twice the
inner width (68M parameters): their full passes here would cost half this file's time and check no code that
ResNet-50 does not; tests/test_convert_imagenet.py checks their import, parameter counts (the widths), bitwise
export and torchvision's logits from the converter's PyTorch reference."""

import copy

import jax
import numpy as np
import pytest
import torch

import convert
from jaxkd.models import canonical_name, get_model
from tests.helpers.assertions import assert_close_scaled
from tests.helpers.compile_once import jit_once
from tests.helpers.torch_references import nchw, nhwc, randomized
from tests.helpers.torchvision_modules import load_torchvision_module
from tests.reference.mdistiller_mobilenetv1 import MobileNetV1 as MdistillerMobileNetV1

REL = 1e-5  # eval mode, float32 on both sides: max|diff| <= REL * max|reference|
# Train mode: JAX float32 within TRAIN_REL of PyTorch float64, or no farther from it than ROUNDING_FACTOR x
# PyTorch's own float32 result (tests/test_model_zoo.py: batch-statistics rounding grows with depth alike in both).
TRAIN_REL, ROUNDING_FACTOR = 3e-5, 2.0
BATCH, CLASSES, SIZE = 3, 10, 64
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TORCHVISION_NAMES = {"tv_resnet18": "resnet18", "tv_resnet34": "resnet34", "tv_resnet50": "resnet50",
                     "tv_resnet101": "resnet101", "tv_resnet152": "resnet152",
                     "tv_wide_resnet50_2": "wide_resnet50_2", "tv_mobilenet_v2": "mobilenet_v2"}
# torchvision's documented parameter counts (its weights' `_meta["num_params"]`, 1000 classes), and MobileNetV1's
# paper's 4.2 million (Howard et al. 2017, Table 8, 1.0 MobileNet-224): checks of the upstream classes used here.
PUBLISHED_PARAMETERS = {"tv_resnet18": 11_689_512, "tv_resnet34": 21_797_672, "tv_resnet50": 25_557_032,
                        "tv_mobilenet_v2": 3_504_872}
PUBLISHED_MILLIONS = {"MobileNetV1": 4.2}


def upstream_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """The architecture's upstream PyTorch class with random weights, non-trivial BN statistics and biases."""
    if arch == "MobileNetV1":
        return randomized(lambda: MdistillerMobileNetV1(num_classes=CLASSES), seed)
    module = load_torchvision_module("models.mobilenetv2" if "mobilenet" in arch else "models.resnet")
    model = randomized(lambda: getattr(module, TORCHVISION_NAMES[arch])(num_classes=CLASSES), seed)
    if arch == "tv_mobilenet_v2":
        model.classifier[0].p = 0.0  # its Dropout(0.2): train-mode parity without random masks
    return model


def upstream_outputs(model: torch.nn.Module, arch: str, images: torch.Tensor) -> dict:
    """name -> NHWC / (B, C) array of one `model(images)` call: the logits, and the stem, stage outputs,
    pre-activation stage outputs and pooled vector read with hooks on the upstream modules (or mdistiller's
    `feats`)."""
    captured, hooks = {"preact": []}, []

    def keep(name):
        return lambda module, inputs, output: captured.__setitem__(name, output.clone())

    if arch == "MobileNetV1":
        hooks.append(model.model[0].register_forward_hook(keep("stem")))
        logits, feats = model(images, is_feat=True)
        stages, preacts, pooled = feats["feats"], feats["preact_feats"], feats["pooled_feat"]
    elif arch == "tv_mobilenet_v2":  # features.0 the stem, .3/.6/.13/.17 the stages (linear bottlenecks)
        for name, index in (("stem", 0), ("stage 0", 3), ("stage 1", 6), ("stage 2", 13), ("stage 3", 17)):
            hooks.append(model.features[index].register_forward_hook(keep(name)))
        hooks.append(model.classifier.register_forward_hook(lambda m, inputs, o: captured.update(pooled=inputs[0])))
        logits = model(images)
        stages = preacts = [captured[f"stage {i}"] for i in range(4)]
        pooled = captured["pooled"]
    else:  # the stem: the top-level ReLU's output; the pre-activation: the input of each stage's last block's
        hooks.append(model.relu.register_forward_hook(keep("stem")))  # last ReLU call (its residual sum)
        for i, stage in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
            hooks.append(stage.register_forward_hook(keep(f"stage {i}")))
            last_relu_input = f"last relu input {i}"
            hooks.append(stage[-1].relu.register_forward_pre_hook(
                lambda m, inputs, name=last_relu_input: captured.__setitem__(name, inputs[0].clone())))
        hooks.append(model.fc.register_forward_hook(lambda m, inputs, o: captured.update(pooled=inputs[0])))
        logits = model(images)
        stages = [captured[f"stage {i}"] for i in range(4)]
        preacts = [captured[f"last relu input {i}"] for i in range(4)]
        pooled = captured["pooled"]
    for hook in hooks:
        hook.remove()
    arrays = {"logits": logits, "pooled": pooled, "stem": captured["stem"]}
    arrays.update({f"feature {i}": f for i, f in enumerate(stages)})
    arrays.update({f"preact feature {i}": f for i, f in enumerate(preacts)})
    return {name: nhwc(v) if v.ndim == 4 else v.detach().numpy() for name, v in arrays.items()}


def jax_outputs(out) -> dict:
    arrays = {"logits": out.logits, "pooled": out.pooled, "stem": out.stem}
    arrays.update({f"feature {i}": f for i, f in enumerate(out.features)})
    arrays.update({f"preact feature {i}": f for i, f in enumerate(out.preact_features)})
    return {name: np.asarray(value, dtype=np.float64) for name, value in arrays.items()}


def running_stats(model: torch.nn.Module) -> dict:
    return {k: v.double().numpy() for k, v in model.state_dict().items() if ".running_" in k}


def assert_as_close_to_float64_as_pytorch(ours: dict, single: dict, exact: dict, what: str) -> float:
    """Each array of `ours` within TRAIN_REL of `exact` (float64), or within ROUNDING_FACTOR x `single`'s
    (PyTorch float32) distance from it; returns the largest relative error of `ours`."""
    assert list(ours) == list(exact), what
    worst = 0.0
    for name in ours:
        scale = float(np.max(np.abs(exact[name])))
        pytorch_error = float(np.max(np.abs(single[name] - exact[name]))) / scale
        assert_close_scaled(ours[name], exact[name], max(TRAIN_REL, ROUNDING_FACTOR * pytorch_error),
                            f"{what} {name} (PyTorch float32: {pytorch_error:.2g})")
        worst = max(worst, float(np.max(np.abs(ours[name] - exact[name]))) / scale)
    return worst


def eval_and_train_forward(arch: str, variables, images):
    """(eval-mode ModelOutput, (train-mode ModelOutput, BN updates)), compiled as one program."""
    model = get_model(arch, CLASSES)

    def both(variables, images):
        return (model.apply(variables, images, train=False, method=model.forward),
                model.apply(variables, images, train=True, method=model.forward, mutable=["batch_stats"]))

    return jit_once(both)(variables, images)


FULL_PARITY = ["tv_resnet18", "tv_resnet34", "tv_resnet50", "tv_mobilenet_v2", "MobileNetV1"]


@pytest.mark.parametrize("arch", FULL_PARITY)
def test_matches_the_upstream_code_through_the_converter(arch, rng):
    reference = upstream_model(arch, int(rng.integers(1 << 30)))
    state_dict = {k: v.clone() for k, v in reference.state_dict().items()}
    imported = convert.import_torch(state_dict)  # the architecture inferred from the keys and shapes
    assert (imported.arch, imported.num_classes, imported.layout) == (arch, CLASSES, convert.native_layout(arch))
    variables = imported.variables
    count = sum(int(leaf.size) for leaf in jax.tree.leaves(variables["params"]))
    assert count == sum(p.numel() for p in reference.parameters())
    classifier = [m for m in reference.modules() if isinstance(m, torch.nn.Linear)][-1]
    with_1000_classes = count + (1000 - CLASSES) * (classifier.in_features + 1)  # 990 more classifier rows
    if arch in PUBLISHED_PARAMETERS:
        assert with_1000_classes == PUBLISHED_PARAMETERS[arch]
    else:
        assert round(with_1000_classes / 1e6, 1) == PUBLISHED_MILLIONS[arch]

    exported = convert.flax_to_torch(variables, arch)
    assert list(exported) == list(state_dict)  # upstream's key order
    for key, tensor in state_dict.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(exported[key], tensor), key
    upstream_model(arch).load_state_dict(exported, strict=True)

    images = rng.standard_normal((BATCH, SIZE, SIZE, 3), dtype=np.float32)
    eval_out, (train_out, updates) = eval_and_train_forward(arch, variables, images)
    with torch.no_grad():
        expected = upstream_outputs(reference.eval(), arch, nchw(images))
    ours = jax_outputs(eval_out)
    assert list(ours) == list(expected)
    for name in ours:
        assert_close_scaled(ours[name], expected[name], REL, f"{arch} eval {name}")

    reference64 = copy.deepcopy(reference).double().train()
    with torch.no_grad():
        single = upstream_outputs(reference.train(), arch, nchw(images))
        exact = upstream_outputs(reference64, arch, nchw(images).double())
    assert_as_close_to_float64_as_pytorch(jax_outputs(train_out), single, exact, f"{arch} train")
    trained = upstream_model(arch)
    trained.load_state_dict(convert.flax_to_torch({**variables, "batch_stats": updates["batch_stats"]}, arch))
    assert_as_close_to_float64_as_pytorch(running_stats(trained), running_stats(reference),
                                          running_stats(reference64), f"{arch} BN update")


def test_mobilenet_v2_applies_its_classifier_dropout_only_in_train_mode_with_a_dropout_rng(rng):
    model = get_model("tv_mobilenet_v2", CLASSES)
    images = rng.standard_normal((2, 32, 32, 3), dtype=np.float32)

    variables = convert.import_torch(upstream_model("tv_mobilenet_v2").state_dict()).variables  # no init to compile

    def passes(variables, dropout_key):
        run = lambda train: model.apply(variables, images, train=train, method=model.forward,  # noqa: E731
                                        rngs={"dropout": dropout_key}, mutable=["batch_stats"])[0]
        return run(True), run(False)

    trained, evaluated = jit_once(passes)(variables, jax.random.key(1))
    classifier = variables["params"]["classifier.1"]
    undropped = lambda out: np.asarray(out.pooled) @ classifier["kernel"] + classifier["bias"]  # noqa: E731
    np.testing.assert_allclose(evaluated.logits, undropped(evaluated), rtol=1e-5, atol=1e-6)
    assert not np.allclose(trained.logits, undropped(trained), rtol=1e-3, atol=1e-4)
    # without a dropout RNG a train-mode pass has no dropout: test_matches_the_upstream_code_through_the_converter


def test_names_do_not_clash_with_the_cifar_zoo():
    assert canonical_name("tv_resnet50") == "tv_resnet50" and canonical_name("resnet50") == "ResNet50"
    assert canonical_name("TV-Wide-ResNet50-2") == "tv_wide_resnet50_2"
    assert canonical_name("mobilenet_v1") == canonical_name("mobilenetv1") == "MobileNetV1"
    assert canonical_name("tv_mobilenet_v2") == "tv_mobilenet_v2" and canonical_name("mobilenetv2") == "MobileNetV2"
