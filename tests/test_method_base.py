"""The method base (jaxkd/methods/base.py) and the registry: settings over defaults, the train/eval apply
helper, what a term leaves unchanged, and metric names derived from the term."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from configs import default
from jaxkd.errors import UserError
from jaxkd.methods import (DISPLAY_NAMES, METHODS, Method, MethodInit, Probe, TermOutput, apply_module, config_section,
                           display_name, get_method)
from jaxkd.models import ModelOutput
from jaxkd.models.batchnorm import BatchNorm


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
    assert set(DISPLAY_NAMES) == set(METHODS)  # a new method names itself for the report's tables
    assert [display_name(label) for label in ("none", "crd+kd", "dkd+ls", "reviewkd", "mine")] == [
        "Baseline", "CRD+KD", "DKD+LS", "ReviewKD", "mine"]
