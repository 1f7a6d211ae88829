"""The method base (jaxkd/methods/base.py) and the registry: settings over defaults, the train/eval apply
helper, what a term leaves unchanged, metric names derived from the term, display names, the variable trees that
started runs have checkpointed, and docs/methods.md's "Adding a method" followed with a toy method."""

import json
import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from configs import default
from jaxkd import methods
from jaxkd.config.specs import positive_float
from jaxkd.errors import UserError
from jaxkd.methods import (METHODS, Batch, Method, MethodInit, Probe, TermOutput, apply_module, config_section,
                           display_name, get_method)
from jaxkd.models import ModelOutput, get_model
from jaxkd.models.batchnorm import BatchNorm
from jaxkd.train import train_and_evaluate
from tests.helpers.runs import save_random_teacher, small_config


class Scaled(Method):
    """A toy method: settings with a float and a string default, a term with two metrics and nothing else."""

    defaults = {"weight": 0.5, "mode": "sum"}

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        total = jnp.sum(student.logits) if self.settings["mode"] == "sum" else jnp.mean(student.logits)
        count = jnp.float32(student.logits.size)
        return TermOutput(self.settings["weight"] * total, metrics={"total": total, "count": count})


def test_settings_are_the_config_section_over_the_defaults():
    assert Scaled("scaled", None).settings == {"weight": 0.5, "mode": "sum"}  # no config
    assert Scaled("scaled", default.get_config()).settings == {"weight": 0.5, "mode": "sum"}  # no section
    method = Scaled("scaled", ConfigDict({"scaled": {"weight": 2}}))  # only what differs
    assert method.settings == {"weight": 2.0, "mode": "sum"} and isinstance(method.settings["weight"], float)
    with pytest.raises(UserError) as error:
        Scaled("scaled", ConfigDict({"scaled": {"wieght": 2.0}}))
    assert str(error.value) == "unknown config.scaled keys ['wieght']; known: ['mode', 'weight']"


def test_config_section_holds_every_key_with_the_overrides():
    section = config_section("crd", nce_k=256)
    assert dict(section) == dict(METHODS["crd"].defaults, nce_k=256)
    with pytest.raises(UserError, match=r"unknown config.crd keys \['nce_kk'\]"):
        config_section("crd", nce_kk=256)


@pytest.mark.filterwarnings("ignore:BYOT.s loss weights")  # the default config is not BYOT's recipe
def test_registry_builds_every_method_by_name():
    config = default.get_config()
    config.model = "resnet8"  # DML's peers default to the student's architecture
    for name in METHODS:
        method = get_method(name, config)
        assert method.name == name and isinstance(method, Method)
    assert get_method("kd", config).uses_teacher and not get_method("none", config).uses_teacher
    with pytest.raises(UserError, match="unknown method 'kdd'; known methods: none, kd, "):
        get_method("kdd", config)


def test_metric_names_are_the_keys_of_the_terms_metrics():
    logits = jnp.arange(6, dtype=jnp.float32).reshape(2, 3)
    probe = Probe(ModelOutput([], logits, logits), None, None, None, 3)
    method = Scaled("scaled", None)
    assert method.initialize(jax.random.PRNGKey(0), probe) == MethodInit()
    assert sorted(method.metric_names) == ["count", "total"]


def test_an_unchanged_term_output_keeps_the_batch_statistics_and_state():
    variables, state = {"params": {"w": 1.0}, "batch_stats": {"mean": 2.0}}, {"bank": 3.0}
    kept = TermOutput(jnp.float32(1)).completed(variables, state)
    assert (kept.batch_stats, kept.state, kept.metrics) == ({"mean": 2.0}, {"bank": 3.0}, {})
    assert TermOutput(jnp.float32(1)).completed({"params": {}}, {}).batch_stats == {}  # a method without BN
    updated = TermOutput(jnp.float32(1), batch_stats={"mean": 4.0}, state={"bank": 5.0}).completed(variables, state)
    assert (updated.batch_stats, updated.state) == ({"mean": 4.0}, {"bank": 5.0})


class Normalized(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        return BatchNorm(name="bn")(nn.Dense(4, name="dense")(x), use_running_average=not train)


def test_apply_module_in_train_and_eval_mode():
    """Train mode: the batch's statistics and updated running averages; eval mode: the running averages, and
    the statistics handed back unchanged."""
    module, x = Normalized(), jax.random.normal(jax.random.PRNGKey(0), (8, 3)) * 3 + 1
    variables = module.init(jax.random.PRNGKey(1), x, train=False)
    out, stats = apply_module(module, variables, x, train=True)
    np.testing.assert_allclose(np.mean(np.asarray(out), axis=0), 0, atol=1e-5)  # normalized by the batch
    assert not np.allclose(stats["bn"]["mean"], variables["batch_stats"]["bn"]["mean"])
    reference, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    assert np.array_equal(out, reference) and jax.tree.all(jax.tree.map(np.array_equal, stats,
                                                                          updates["batch_stats"]))
    out, stats = apply_module(module, variables, x, train=False)
    assert stats is variables["batch_stats"]
    assert np.array_equal(out, module.apply(variables, x, train=False))


def test_every_method_has_a_table_name_and_labels_compose():
    """The name is each class's `display_name`: a new method names itself for the report's tables."""
    assert all(isinstance(METHODS[name].display_name, str) for name in METHODS)
    assert len({METHODS[name].display_name for name in METHODS}) == len(METHODS)
    assert [display_name(label) for label in ("none", "crd+kd", "dkd+ls", "reviewkd", "fitnet", "kd+dot", "mine")] == [
        "Baseline", "CRD+KD", "DKD+LS", "ReviewKD", "FitNets", "KD+DOT", "mine"]


# --- checkpoints: the method variables' tree as runs have saved it -----------------------------------------------

# Every method's variables and state, as the first version of jaxkd/methods with one module per method found them
# (written by the code before it, commit 62d095e) on the probe below: path -> [shape, dtype]. A started run's
# checkpoint restores only into a train state of this structure (Orbax restores by the template's tree).
SAVED_TREES = Path(__file__).parent / "reference" / "method_variable_trees.json"


def tree_layout(tree) -> dict:
    return {jax.tree_util.keystr(path): [list(leaf.shape), str(leaf.dtype)]
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.filterwarnings("ignore:BYOT.s loss weights")  # the default config is not BYOT's recipe
def test_method_variables_keep_the_structure_runs_have_checkpointed():
    """On resnet8 and wideresnet16_2 (resnet8 for FSP and KDSVD, which need equal channels) at 32x32, 10 classes,
    every method's initial variables and state have the saved paths, shapes and dtypes (traced, not computed)."""
    saved = json.loads(SAVED_TREES.read_text())
    images = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32)
    for name in METHODS:
        config = default.get_config()
        config.model = "resnet8"
        if name == "crd":
            config.crd = {"nce_k": 16}
        method = get_method(name, config)
        teacher_arch = "resnet8" if name in ("fsp", "kdsvd") else "wideresnet16_2"

        def init(images, method=method, teacher_arch=teacher_arch):
            outputs = []
            for arch, key in (("resnet8", 1), (teacher_arch, 2)):
                model = get_model(arch, 10)
                variables = model.init(jax.random.PRNGKey(key), images, train=False)
                outputs.append(apply_module(model, variables, images, train=arch == "resnet8" and key == 1,
                                            method=model.forward)[0])
            batch = Batch(images, jnp.arange(4) % 10, jnp.arange(4), jax.random.PRNGKey(3))
            method_init = method.init(jax.random.PRNGKey(4), Probe(*outputs, batch, np.arange(200) % 10, 10,
                                                                   model, variables))  # the teacher's
            return dict(method_init.variables), method_init.state

        variables, state = jax.eval_shape(init, images)
        expected = saved.get(name, {})
        assert tree_layout(variables) == expected.get("variables", {}), name
        assert tree_layout(state) == expected.get("state", {}), name


# --- "Adding a method" (docs/methods.md), step by step ------------------------------------------------------------

# 1. The file: a method with a teacher, a setting and a trainable module (a projection with batch statistics).
class Projection(nn.Module):
    features: int

    @nn.compact
    def __call__(self, vectors, train: bool):
        return BatchNorm(name="bn")(nn.Dense(self.features, name="dense")(vectors), use_running_average=not train)


class Toy(Method):
    """The student's pooled vector, projected, pulled towards the teacher's (mean squared error)."""

    display_name = "Toy"
    uses_teacher = True
    defaults = {"scale": 1.0}
    specs = {"scale": positive_float}

    def module(self, student, teacher) -> Projection:
        return Projection(teacher.pooled.shape[-1])

    def module_inputs(self, student, teacher) -> tuple:
        return (student.pooled.astype(jnp.float32),)

    def term(self, variables, state, student, teacher, batch, train) -> TermOutput:
        projected, batch_stats = self.apply_module_of(variables, student, teacher, train)
        mse = jnp.mean(jnp.square(projected - self.settings["scale"] * teacher.pooled.astype(jnp.float32)))
        return TermOutput(mse, metrics={"mse": mse}, batch_stats=batch_stats)


@pytest.mark.slow
def test_a_method_added_as_documented_trains(tmp_path, monkeypatch):
    """The documented steps alone: the class above (1), its registry line (2), its config entry (3); this test is
    step 4. It trains on digits: its module learns (the term falls), the student learns, its metric is logged,
    and the tables name it."""
    monkeypatch.setitem(methods.METHODS, "toy", Toy)  # 2. `"toy": Toy,` in METHODS
    config = small_config(epochs=2)  # 3. the config entry: the recipe's weights and the method's section
    config.data.digits_size = 32  # 44 steps on 16x16 digits left this student at chance (10.2)
    config.method = "toy"
    config.teacher.checkpoint = str(save_random_teacher(tmp_path / "teacher.pth"))
    config.loss.gamma, config.loss.alpha, config.loss.beta = 1.0, 0.0, 1.0
    config.toy = config_section("toy")
    result = train_and_evaluate(config, tmp_path / "run")

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row["kind"] == "train"]
    assert len(train) >= 3 and all(math.isfinite(row["toy_mse"]) and row["term"] == row["toy_mse"] for row in train)
    assert train[-1]["toy_mse"] < 0.8 * train[0]["toy_mse"], [row["toy_mse"] for row in train]
    assert result["last_top1"] >= 20.0, result  # twice chance on digits' 10 classes
    assert display_name("toy+kd") == "Toy+KD"
