"""jaxkd.engine.compile_options: the YNN fusions on CPU by default, off with JAXKD_CPU_YNN=0 or cpu_ynn=False,
nothing on other platforms, the user's XLA_FLAGS respected, a rejected option a warning; and the evaluation step
compiled with them (its optimized HLO has YNN fusions it lacks when the option is off)."""

import dataclasses
import os
import re

import jax
import numpy as np
import pytest

from configs import default, dml_wrn
from jaxkd.engine import compile_options, evaluation
from jaxkd.engine.compile_options import (CPU_YNN_OPTIONS, CPU_YNN_OPTIONS_DEPTHWISE, ENV_VAR, YNN_OPTION,
                                          compiler_options)
from jaxkd.engine.mesh import data_mesh
from jaxkd.engine.setup import Setup, Teacher
from jaxkd.errors import UserError
from jaxkd.methods import get_method
from jaxkd.models import get_model

on_cpu = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the YNN option is XLA:CPU's")
YNN_IN_XLA_FLAGS = YNN_OPTION in os.environ.get("XLA_FLAGS", "")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    jax.devices()  # XLA has read XLA_FLAGS; from here on only compiler_options reads it
    monkeypatch.setenv("XLA_FLAGS", re.sub(rf"--{YNN_OPTION}=\S*", "", os.environ.get("XLA_FLAGS", "")))


@on_cpu
def test_cpu_gets_the_ynn_option_by_default():
    assert compiler_options() == CPU_YNN_OPTIONS
    assert compiler_options(data_mesh()) == CPU_YNN_OPTIONS
    assert compiler_options(jax.devices()[0]) == CPU_YNN_OPTIONS
    assert compiler_options("cpu") == CPU_YNN_OPTIONS
    options = compiler_options()
    options[YNN_OPTION] = "changed by the caller"
    assert compiler_options()[YNN_OPTION] != "changed by the caller"  # a fresh dict each time


@on_cpu
def test_a_program_with_a_depthwise_separable_model_keeps_elementwise_ops_with_xla():
    """A MobileNet or ShuffleV2 in the program (student or teacher): YNNPACK gets dots and reductions only (its
    elementwise fusions would take the depthwise convolutions' shifted multiply-adds apart); plain models and
    ShuffleV1 (measured faster with them) keep the elementwise fusions."""
    plain, depthwise = get_model("wrn_16_2"), get_model("MobileNetV2")
    assert compiler_options("cpu", models=(plain,)) == CPU_YNN_OPTIONS
    assert compiler_options("cpu", models=(plain, depthwise)) == CPU_YNN_OPTIONS_DEPTHWISE
    for arch in ("ShuffleV2", "MobileNetV1", "tv_mobilenet_v2"):
        assert compiler_options("cpu", models=(get_model(arch),)) == CPU_YNN_OPTIONS_DEPTHWISE, arch
    assert compiler_options("cpu", models=(get_model("ShuffleV1"),)) == CPU_YNN_OPTIONS
    assert "ELTWISE" not in CPU_YNN_OPTIONS_DEPTHWISE[YNN_OPTION] and "ELTWISE" in CPU_YNN_OPTIONS[YNN_OPTION]
    assert compiler_options("gpu", models=(depthwise,)) is None


@pytest.mark.parametrize("platform", ["gpu", "cuda", "rocm", "tpu"])
def test_other_platforms_get_nothing(platform):
    assert compiler_options(platform) is None


@pytest.mark.parametrize("value", ["0", "false", "OFF", "no"])
def test_the_environment_variable_turns_it_off(monkeypatch, value):
    monkeypatch.setenv(ENV_VAR, value)
    assert compiler_options("cpu") is None
    assert compiler_options("cpu", cpu_ynn=True) == CPU_YNN_OPTIONS  # the argument wins


def test_the_argument_turns_it_off(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "1")
    assert compiler_options("cpu", cpu_ynn=False) is None
    assert compiler_options("cpu") == CPU_YNN_OPTIONS


def test_a_block_with_its_own_setting_restores_the_environment(monkeypatch):
    with compile_options.cpu_ynn_setting(False):
        assert compiler_options("cpu") is None
    assert ENV_VAR not in os.environ
    monkeypatch.setenv(ENV_VAR, "0")
    with compile_options.cpu_ynn_setting(True):
        assert compiler_options("cpu") == CPU_YNN_OPTIONS
    with compile_options.cpu_ynn_setting(None):
        assert compiler_options("cpu") is None
    assert os.environ[ENV_VAR] == "0"


def test_a_bad_environment_value_is_a_user_error(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "maybe")
    with pytest.raises(UserError, match=f"{ENV_VAR}='maybe'"):
        compiler_options("cpu")


def test_an_explicit_xla_flag_wins(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=2 --{YNN_OPTION}=dot")
    assert compiler_options("cpu") is None


@on_cpu
def test_an_option_this_jaxlib_rejects_is_a_warning_and_xla_defaults(monkeypatch):
    monkeypatch.setattr(compile_options, "CPU_YNN_OPTIONS", {YNN_OPTION: "LIBRARY_FUSION_TYPE_NOT_A_TYPE"})
    with pytest.warns(UserWarning, match="rejects the XLA:CPU options"):
        assert compiler_options("cpu") is None


def ynn_fusions(step, model) -> int:
    """The number of YNN fusions in the optimized HLO of the evaluation step of `model` (batch 8)."""
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
    batch = (np.zeros((8, 32, 32, 3), np.uint8), np.zeros(8, np.int32), np.ones(8, bool), np.zeros((1, 3), np.int32))
    return len(re.findall(r'"kind":"__ynn_fusion"', step.lower(variables, *batch).compile().as_text()))


@on_cpu
@pytest.mark.skipif(YNN_IN_XLA_FLAGS, reason="XLA_FLAGS turns the YNN fusions on for every compile")
def test_the_evaluation_step_is_compiled_with_the_option_and_without_it_when_off(monkeypatch):
    model = get_model("resnet8", 10)
    with_option = ynn_fusions(evaluation.eval_step_for(model), model)
    monkeypatch.setenv(ENV_VAR, "0")
    step_off = evaluation.eval_step_for(model)
    without = ynn_fusions(step_off, model)
    # BN + ReLU and the other elementwise fusions go to YNNPACK only with the option
    assert with_option > without, (with_option, without)
    monkeypatch.delenv(ENV_VAR)
    assert evaluation.eval_step_for(model) is not step_off  # the cached steps are per options


@on_cpu
def test_the_networks_a_program_runs_choose_its_options():
    """A depthwise-separable DML peer beside a plain student makes the train programs (`Setup.models`) and the
    evaluation step (`Setup.evaluated_models`) keep elementwise ops with XLA; a depthwise teacher decides the
    train programs' list but not the evaluation step's, which does not run it."""
    config = dml_wrn.get_config()
    config.model, config.dml.peers = "resnet8", ("MobileNetV2",)
    with_peer = Setup(student=get_model("resnet8"), method=get_method("dml", config), teacher=None, optimizer=None,
                      train=None, test=None, steps_per_epoch=1, mesh=data_mesh(), config=config)
    assert compiler_options("cpu", models=with_peer.models) == CPU_YNN_OPTIONS_DEPTHWISE
    assert compiler_options("cpu", models=with_peer.evaluated_models) == CPU_YNN_OPTIONS_DEPTHWISE
    config.dml.peers = ("resnet8",)
    plain_peer = dataclasses.replace(with_peer, method=get_method("dml", config))
    assert compiler_options("cpu", models=plain_peer.models) == CPU_YNN_OPTIONS
    kd = dataclasses.replace(with_peer, method=get_method("kd", default.get_config()),
                             teacher=Teacher(get_model("MobileNetV2"), {}, "MobileNetV2"))
    assert compiler_options("cpu", models=kd.models) == CPU_YNN_OPTIONS_DEPTHWISE
    assert compiler_options("cpu", models=kd.evaluated_models) == CPU_YNN_OPTIONS


@on_cpu
def test_the_evaluation_functions_compile_with_the_options_of_the_networks_they_are_given(monkeypatch):
    """`evaluate_classifiers` and `evaluate_batches` (the training loop's evaluations, held and streamed) hand
    their `models` to the step they compile: a MobileNetV2 student's evaluation at batch 500 took 331 ms with
    the plain list and 88 ms with its own."""
    given = []

    def recording_step_for(logits_fn, names, mesh=None, normalization="pytorch_kd", models=()):
        given.append(compiler_options(mesh, models=models))
        return original(logits_fn, names, mesh, normalization, models)

    original = evaluation.classifiers_step_for
    monkeypatch.setattr(evaluation, "classifiers_step_for", recording_step_for)

    def logits_fn(variables, images):  # a stand-in classifier: the options are what is checked
        return {"model": jax.numpy.mean(images, axis=(1, 2)) @ variables["kernel"]}

    variables = {"kernel": np.ones((3, 5), np.float32)}
    images = np.zeros((4, 32, 32, 3), np.uint8)
    labels = np.arange(4, dtype=np.int32) % 5
    models = (get_model("MobileNetV2"),)
    evaluation.evaluate_classifiers(logits_fn, variables, images, labels, 4, models=models)
    batches = [{"image": images, "label": labels, "mask": np.ones(4, bool)}]
    evaluation.evaluate_batches(logits_fn, variables, batches, 4, models=models)
    evaluation.evaluate_classifiers(logits_fn, variables, images, labels, 4)
    assert given == [CPU_YNN_OPTIONS_DEPTHWISE, CPU_YNN_OPTIONS_DEPTHWISE, CPU_YNN_OPTIONS]
