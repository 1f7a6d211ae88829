"""jaxkd/config/checks.py: every config value checked before any work (type, range, allowed set), for the engine's
keys and every registered method's settings, and settings that cannot take effect refused or listed as unused.
All in-process and without a compile: the checks are called directly, or `jaxkd.train.main` stops in them."""

import importlib
from pathlib import Path

import jax
import pytest
from ml_collections import ConfigDict

from configs import default, mdistiller, repdistiller
from jaxkd.config import recipes
from jaxkd.config.checks import check_run_config, engine_specs
from jaxkd.config.command_line import dotted_keys
from jaxkd.config.specs import Epochs, Flag, ModelName, ModelNames, Number, OneOf, Text
from jaxkd.errors import UserError
from jaxkd.methods import METHODS, get_method
from jaxkd.tools import published
from jaxkd.train import main

REPO = Path(__file__).resolve().parents[1]

# The keys that accept any value of their type (paths, names, switches): a type check only, no range to leave.
# Every other key must have a value out of its range; a key added without a spec fails below.
TYPE_ONLY = {"data.data_dir", "data.download", "data.drop_last", "data.saliencymix", "data.saliencymix_per_example",
             "data.tfds_name", "data.train_split", "data.eval_split", "data.skip_unreadable",
             "optimizer.nesterov", "optimizer.dot", "loss.logit_standardization",
             "teacher.checkpoint", "progress_bar", "wandb.project", "wandb.entity", "reviewkd.student_preact",
             "catkd.normalize", "ofd.teacher_train_mode"}


def bad_values(spec) -> tuple:
    """(a value of the wrong type, a value of the right type out of range or None) for a spec."""
    if isinstance(spec, Number):
        below = spec.low if spec.low_open else spec.low - 1
        return (2.5 if spec.integer else "abc"), below
    if isinstance(spec, (OneOf, ModelName)):
        return 5, "no_such_thing"
    if isinstance(spec, ModelNames):
        return 5, ("no_such_model",)
    if isinstance(spec, Epochs):
        return ("abc",), (0, 10)
    if isinstance(spec, (Flag, Text)):
        return ("yes" if isinstance(spec, Flag) else 5), None
    raise AssertionError(f"no bad values for {spec!r}: add its case here")


def every_key_and_spec():
    """(key, spec) of every engine key and every registered method's setting (`method.key`)."""
    yield from engine_specs().items()
    for name, method in METHODS.items():
        yield from ((f"{name}.{key}", spec) for key, spec in method.specs.items())


def test_every_key_has_a_spec_and_the_type_only_keys_are_listed():
    assert set(dotted_keys(default.get_config())) == set(engine_specs())
    for name, method in METHODS.items():
        assert set(method.specs) == set(method.defaults), name
    type_only = {key for key, spec in every_key_and_spec() if bad_values(spec)[1] is None}
    assert type_only == TYPE_ONLY


def default_value(key: str):
    """The default of an engine key (jaxkd/config/default.py) or a method's setting (`method.key`)."""
    if key not in engine_specs():
        name, setting = key.split(".")
        return METHODS[name].defaults[setting]
    value = default.get_config()
    for part in key.split("."):
        value = value[part]
    return value


def checked(key: str, value) -> None:
    """Runs the check a run makes on the default config (or a method's section) with `key` set to `value`."""
    section, _, name = key.partition(".")
    if section in METHODS and section not in engine_specs():
        config = ConfigDict({"model": "resnet8", section: {name: value}})  # DML's peers follow the model
        get_method(section, config)
        return
    config = default.get_config().to_dict()  # a plain dict: ConfigDict would refuse the wrong types itself
    holder = config
    for part in key.split(".")[:-1]:
        holder = holder[part]
    holder[key.split(".")[-1]] = value
    check_run_config(config)


@pytest.mark.filterwarnings("ignore:BYOT.s loss weights")  # the default loss is not BYOT's recipe
def test_every_key_refuses_a_wrong_type_and_a_value_out_of_range_in_one_line():
    checked_values = 0
    for key, spec in every_key_and_spec():
        for value in bad_values(spec):
            if value is None:
                continue
            with pytest.raises(UserError) as error:
                checked(key, value)
            message = str(error.value)
            assert message.startswith(f"--config.{key}=") and "\n" not in message, (key, value, message)
            checked_values += 1
        assert spec.problem(default_value(key)) is None, key  # and its default passes
    assert checked_values > 2 * len(engine_specs())


def shipped_configs():
    """Every config the project ships, with every argument its runners and docs use: the argument-free files,
    demo.py's two roles, repdistiller.py for each pair of RepDistiller's tables and each of its methods,
    mdistiller.py for each of those pairs and the pairs it has recipes for, and each of its methods, imagenet.py for
    each of its pairs and methods."""
    names = [(f"{path.stem}.py", importlib.import_module(f"configs.{path.stem}").get_config, ())
             for path in sorted((REPO / "configs").glob("*.py"))
             if path.stem not in ("__init__", "demo", "repdistiller", "mdistiller", "imagenet")]
    names += [(f"demo.py:{role}", importlib.import_module("configs.demo").get_config, (role,))
              for role in ("teacher", "student")]
    pairs = {(recipes.repdistiller_name(t), recipes.repdistiller_name(s))
             for t, s in published.REPDISTILLER_PAIRS_SAME + published.REPDISTILLER_PAIRS_DIFFERENT}
    names += [(f"repdistiller.py:{t},{s},{m}", repdistiller.get_config, (f"{t},{s},{m}",))
              for t, s in sorted(pairs) for m in recipes.REPDISTILLER_WEIGHTS]
    recipe_pairs = {*recipes.KD_LS, *recipes.DKD_LS} | {
        (recipes.repdistiller_name(t), recipes.repdistiller_name(s))
        for t, s in [*recipes.DKD_BETA, *recipes.REVIEWKD_WEIGHT]}
    names += [(f"mdistiller.py:{t},{s},{m}", mdistiller.get_config, (f"{t},{s},{m}",))
              for t, s in sorted(pairs | recipe_pairs) for m in recipes.MDISTILLER_METHODS]
    names += [(f"imagenet.py:{t},{s},{m}", importlib.import_module("configs.imagenet").get_config, (f"{t},{s},{m}",))
              for t, s in recipes.IMAGENET_PAIRS for m in recipes.IMAGENET_METHODS]
    return names


def test_every_shipped_config_passes_the_checks_with_nothing_unused():
    configs = shipped_configs()
    assert len(configs) > 13 * len(recipes.REPDISTILLER_WEIGHTS) + 13 * len(recipes.MDISTILLER_METHODS)
    for name, get_config, arguments in configs:
        config = get_config(*arguments)
        assert check_run_config(config) == [], name  # no refusal, and no setting listed as unused
        assert get_method(config.method, config).name == config.method  # the method's section passes its specs


def with_changes(get_config, **changes) -> ConfigDict:
    config = get_config()
    for key, value in changes.items():
        holder = config
        *parents, name = key.split("__")
        for part in parents:
            holder = holder[part]
        with config.unlocked():
            holder[name] = value
    return config


def demo_teacher():
    return importlib.import_module("configs.demo").get_config("teacher")


def demo_student():
    return importlib.import_module("configs.demo").get_config("student")


def kd_wrn():
    return importlib.import_module("configs.kd_wrn").get_config()


@pytest.mark.parametrize("get_config, changes, refusal", [
    (demo_teacher, {"loss__alpha": 0.9}, "--config.loss.alpha=0.9: method 'none' uses no teacher"),
    (demo_teacher, {"loss__kd_temperature": 2.0}, "--config.loss.kd_temperature=2.0: method 'none' uses no teacher"),
    (lambda: importlib.import_module("configs.byot_wrn").get_config(), {"loss__logit_standardization": True},
     "--config.loss.logit_standardization=True: method 'byot' uses no teacher"),
    (demo_student, {"loss__beta": 1.0}, "--config.loss.beta=1.0: method 'kd' has no term for beta to weight"),
    (demo_teacher, {"data__saliencymix_prob": 0.2}, "--config.data.saliencymix_prob=0.2: SaliencyMix is off"),
    (demo_teacher, {"data__saliencymix_per_example": True},
     "--config.data.saliencymix_per_example=True: SaliencyMix is off"),
    (demo_teacher, {"optimizer__lr_reference_batch": 256},
     "--config.optimizer.lr_reference_batch=256: it scales the lr only with --config.optimizer.lr_scaling=linear"),
    (kd_wrn, {"data__digits_size": 16}, "--config.data.digits_size=16: it sets the size of --config.data.source="
                                       "digits, not of data.source 'tfds'"),
    (demo_teacher, {"notes": "x"}, "config.notes: not a key jaxkd reads"),
    (demo_teacher, {"saliencymix": True}, "config.saliencymix is now config.data.saliencymix"),  # a key that moved
    # pytorch-kd's recipe values, once spelled "seed" (saved config.json files keep resuming: tests/test_train.py)
    (demo_teacher, {"data__normalization": "seed"},
     "--config.data.normalization=seed is now --config.data.normalization=pytorch_kd"),
    (demo_teacher, {"optimizer__lr_decay_timing": "seed"},
     "--config.optimizer.lr_decay_timing=seed is now --config.optimizer.lr_decay_timing=pytorch_kd"),
])
def test_a_setting_that_cannot_take_effect_is_refused_in_one_line(get_config, changes, refusal):
    config = with_changes(get_config, **changes)
    with pytest.raises(UserError) as error:
        check_run_config(config)
    assert str(error.value).startswith(refusal) and "\n" not in str(error.value)
    assert check_run_config(get_config()) == []  # the config without the change passes


def test_settings_a_recipe_carries_unused_are_listed_not_refused():
    from configs import crd_wrn
    from jaxkd.methods import config_section

    assert check_run_config(with_changes(kd_wrn, method="kd", crd=config_section("crd"))) == []  # the defaults
    notes = check_run_config(with_changes(kd_wrn, crd=config_section("crd", nce_k=4096)))
    assert notes == ["config.crd (nce_k=4096): the method is 'kd', not 'crd'"]
    notes = check_run_config(with_changes(demo_teacher, teacher__arch="wrn40_2"))
    assert notes == ["teacher.arch=wrn40_2 (method 'none' uses no teacher)"]
    # a recipe's run with another method: CRD's recipe as the student alone, its teacher and section carried
    notes = check_run_config(with_changes(crd_wrn.get_config, method="none", loss__beta=0.0, crd__nce_k=256))
    assert notes == ["teacher.arch=wideresnet40_2 (method 'none' uses no teacher)",
                     "config.crd (nce_k=256): the method is 'none', not 'crd'"]


@pytest.mark.parametrize("config, override, message", [
    # issue 32, item 5
    ("demo.py", "--config.optimizer.lr_decay_epochs=abc",
     "--config.optimizer.lr_decay_epochs=abc: must be distinct epochs >= 1"),
    ("repdistiller.py:resnet20,resnet8,ab", "--config.ab.init_epochs=-1", "--config.ab.init_epochs=-1: must be an "
                                                                          "integer >= 0"),
    ("demo.py:teacher", "--config.loss.alpha=0.9", "--config.loss.alpha=0.9: method 'none' uses no teacher"),
    # issue 34, item 3
    ("demo.py:teacher", "--config.eval_batch_size=0", "--config.eval_batch_size=0: must be an integer >= 1"),
    ("demo.py:teacher", "--config.loss.kd_temperature=0", "--config.loss.kd_temperature=0.0: must be a number > 0"),
    ("demo.py:student", "--config.loss.kd_temperature=0", "--config.loss.kd_temperature=0.0: must be a number > 0"),
    # issue 28, item 2: a key that moved
    ("demo.py:teacher", "--config.saliencymix_prob=0.3",
     "bad command line or config: --config.saliencymix_prob is now --config.data.saliencymix_prob"),
])
def test_the_reported_commands_are_one_line_before_any_work(config, override, message, tmp_path, capsys,
                                                             monkeypatch):
    compiled = []

    def on_event(event, duration, **kwargs):
        if event in ("/jax/core/compile/backend_compile_duration", "/jax/compilation_cache/cache_retrieval_time_sec"):
            compiled.append(duration)

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the config was checked")

    monkeypatch.setattr("jaxkd.engine.setup.load_split", no_data)
    jax.monitoring.register_event_duration_secs_listener(on_event)
    workdir = tmp_path / "run"
    try:
        status = main(["train", "--config", str(REPO / "configs" / config), "--workdir", str(workdir), override])
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    out, err = capsys.readouterr()
    assert status == 2 and err == f"error: {err.removeprefix('error: ').strip()}\n", err
    assert err.startswith(f"error: {message}") and "Traceback" not in out + err
    assert not compiled and not workdir.exists()
