"""jaxkd.engine.compile_options: the YNN fusions on CPU by default, off with JAXKD_CPU_YNN=0 or cpu_ynn=False, nothing on
other platforms, the user's XLA_FLAGS respected, a rejected option a warning; and the evaluation step compiled
with them (its optimized HLO has YNN fusions it lacks when the option is off)."""

import os
import re

import jax
import numpy as np
import pytest

from jaxkd.engine import compile_options, evaluation
from jaxkd.engine.compile_options import (CPU_YNN_OPTIONS, CPU_YNN_OPTIONS_DEPTHWISE, ENV_VAR, YNN_OPTION,
                                          compiler_options)
from jaxkd.engine.mesh import data_mesh
from jaxkd.errors import UserError
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
