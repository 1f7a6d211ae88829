"""Every config value a run reads, checked before any work: its type and range, and whether it can take effect.

Each key has a spec saying what it accepts (`positive_int`, `fraction`, `one_of(...)`, ...): the engine's keys
in `engine_specs` below, each method's settings beside its defaults (`Method.specs`, checked by
`Method.__init__`). A value outside its spec is one line naming the key, the value and what is allowed:
`--config.ab.init_epochs=-1: must be an integer >= 0`.

Settings that cannot take effect in the configured run (`unused_settings`) are refused when no recipe sets them
so: the KD term's settings (loss.alpha, kd_temperature, logit_standardization) for a method without a teacher,
loss.beta for a method without a term (none, kd), SaliencyMix's settings with SaliencyMix off,
optimizer.lr_reference_batch without lr_scaling, optimizer.dot_delta without DOT (and DOT without a
distillation loss), the streaming path's sizes and workers with a device-resident source, and a top-level key
jaxkd does not read. Two kinds that a
config derived from another recipe legitimately carries (a recipe run with another method: `--config.method`,
the bench's method swap) are only listed once at start as unused: a teacher for a method that uses none, and
the section of a method not selected whose values differ from its defaults.
"""

from __future__ import annotations

from jaxkd.config import default
from jaxkd.config.specs import (Epochs, ModelName, Number, Spec, check_value, flag, fraction, non_negative_float,
                                non_negative_int, one_of, positive_float, positive_int, shown, text)
from jaxkd.data.augment import NORMALIZATIONS, PADDINGS
from jaxkd.data.sources import DIGITS_SIZES, SOURCES, STREAMING_SOURCES
from jaxkd.engine.dot import check_dot_settings
from jaxkd.engine.optimizer import LR_DECAY_TIMINGS, LR_SCALINGS
from jaxkd.errors import UserError
from jaxkd.io.wandb_log import MODES
from jaxkd.io.workdir import MOVED_KEYS, RENAMED_VALUES
from jaxkd.methods import METHODS, Method
from jaxkd.models import COMPUTE_DTYPES


def engine_specs() -> dict[str, Spec]:
    """Every key of jaxkd/config/default.py (dotted) -> its spec. (A function: the allowed sets come from the modules
    that use them, which import JAX, and the methods registered at the time of the check.)"""

    return {
        "seed": Number(True, 0, 2**32 - 1),  # jax.random.PRNGKey: 2**32 and above repeat the seeds below
        "model": ModelName(),
        "method": one_of(*METHODS),
        "data.source": one_of(*SOURCES, *STREAMING_SOURCES),
        "data.data_dir": text,
        "data.download": flag,
        "data.padding": one_of(*PADDINGS),
        "data.normalization": one_of(*NORMALIZATIONS),
        "data.drop_last": flag,
        "data.saliencymix": flag,
        "data.saliencymix_prob": fraction,
        "data.saliencymix_per_example": flag,
        "data.tfds_name": text,
        "data.image_size": positive_int,
        "data.eval_resize": positive_int,
        "data.eval_crop": positive_int,
        "data.workers": Number(True, -1),  # -1: one per core (the default); 0: threads; N: N processes
        "data.digits_size": one_of(*DIGITS_SIZES),
        "data.train_split": text,
        "data.eval_split": text,
        "data.skip_unreadable": flag,
        "batch_size": positive_int,
        "dtype": one_of(*COMPUTE_DTYPES),
        "eval_batch_size": positive_int,
        "epochs": positive_int,
        "optimizer.lr": positive_float,
        "optimizer.momentum": Number(False, 0, 1, high_open=True),
        "optimizer.nesterov": flag,
        "optimizer.weight_decay": non_negative_float,
        "optimizer.lr_decay_epochs": Epochs(),
        "optimizer.lr_decay_rate": Number(False, 0, 1, low_open=True),
        "optimizer.lr_decay_timing": one_of(*LR_DECAY_TIMINGS),
        "optimizer.lr_scaling": one_of(*LR_SCALINGS),
        "optimizer.lr_reference_batch": positive_int,
        "optimizer.dot": flag,
        "optimizer.dot_delta": Number(False, 0, 1, high_open=True),
        "loss.gamma": non_negative_float,
        "loss.alpha": non_negative_float,
        "loss.beta": non_negative_float,
        "loss.kd_temperature": positive_float,
        "loss.logit_standardization": flag,
        "teacher.checkpoint": text,
        "teacher.arch": ModelName(optional=True),
        "log_every_steps": positive_int,
        "steps_per_dispatch": non_negative_int,  # 0: automatic
        "eval_every_epochs": positive_int,
        "checkpoint_every_epochs": positive_int,
        "keep_checkpoints": positive_int,
        "progress_bar": flag,
        "wandb.project": text,
        "wandb.entity": text,
        "wandb.mode": one_of(*MODES),
    }


def _value(config, key: str):
    """`config`'s value at a dotted key; KeyError when it lacks it."""
    for part in key.split("."):
        if not hasattr(config, "keys") or part not in config:
            raise KeyError(key)
        config = config[part]
    return config


def check_engine_values(config) -> None:
    """Every engine key the config holds against its spec (a config without a key runs with the code's default)."""
    for key, spec in engine_specs().items():
        try:
            value = _value(config, key)
        except KeyError:
            continue
        if isinstance(value, str) and value in RENAMED_VALUES.get(key, {}):
            raise UserError(f"--config.{key}={value} is now --config.{key}={RENAMED_VALUES[key][value]}")
        check_value(key, value, spec)


def unused_settings(config) -> list[str]:
    """Settings that cannot take effect in the run `config` describes: refused with one line (UserError), or
    where a recipe legitimately carries them returned as notes, one per setting, to list once at start."""

    defaults = default.get_config()
    sections = {key.split(".")[0] for key in engine_specs()}
    unknown = sorted(key for key in config.keys() if key not in sections and key not in METHODS)
    moved = [key for key in unknown if key in MOVED_KEYS]
    if moved:
        raise UserError(f"config.{moved[0]} is now config.{MOVED_KEYS[moved[0]]}")
    if unknown:
        raise UserError(f"config.{unknown[0]}: not a key jaxkd reads (neither a key of jaxkd/config/default.py nor a "
                        f"method's section)")

    def get(key):
        try:
            return _value(config, key)
        except KeyError:
            return _value(defaults, key)

    name = get("method")
    method = METHODS[name]

    def refuse(key, why):
        raise UserError(f"--config.{key}={shown(get(key))}: {why}")

    if not method.uses_teacher:
        no_teacher = f"method {name!r} uses no teacher, so there is no KD term"
        if get("loss.alpha") != 0:
            refuse("loss.alpha", f"{no_teacher}; set 0, or a method with a teacher (e.g. --config.method=kd)")
        for key in ("loss.kd_temperature", "loss.logit_standardization"):
            if get(key) != _value(defaults, key):
                refuse(key, f"{no_teacher}; leave it at {shown(_value(defaults, key))}")
    if method.term is Method.term and method.init_stage is Method.init_stage and get("loss.beta") != 0:
        refuse("loss.beta", f"method {name!r} has no term for beta to weight; set 0")
    if not get("data.saliencymix"):
        for key in ("data.saliencymix_prob", "data.saliencymix_per_example"):
            if get(key) != _value(defaults, key):
                refuse(key, "SaliencyMix is off; turn it on with --config.data.saliencymix=True, or leave this at "
                            f"{shown(_value(defaults, key))}")
    if get("data.source") not in STREAMING_SOURCES:
        for key in ("data.image_size", "data.eval_resize", "data.eval_crop", "data.workers", "data.train_split",
                    "data.eval_split", "data.skip_unreadable"):
            if get(key) != _value(defaults, key):
                refuse(key, f"it sets the streaming path (--config.data.source={STREAMING_SOURCES[0]}), not "
                            f"data.source {get('data.source')!r}; leave it at {shown(_value(defaults, key))}")
    if get("data.source") != "digits" and get("data.digits_size") != _value(defaults, "data.digits_size"):
        refuse("data.digits_size", f"it sets the size of --config.data.source=digits, not of data.source "
                                   f"{get('data.source')!r}; leave it at {_value(defaults, 'data.digits_size')}")
    if get("data.source") != "tfds_images" and get("data.tfds_name"):
        refuse("data.tfds_name", "it names the dataset of --config.data.source=tfds_images only; leave it empty")
    if get("optimizer.lr_scaling") == "none" and get("optimizer.lr_reference_batch") != _value(
            defaults, "optimizer.lr_reference_batch"):
        refuse("optimizer.lr_reference_batch", "it scales the lr only with --config.optimizer.lr_scaling=linear")
    if not get("optimizer.dot") and get("optimizer.dot_delta") != _value(defaults, "optimizer.dot_delta"):
        refuse("optimizer.dot_delta", "it sets DOT's momenta only with --config.optimizer.dot=True")
    if get("optimizer.dot"):
        has_term = method.term is not Method.term or method.init_stage is not Method.init_stage
        if not (method.uses_teacher and get("loss.alpha") > 0) and not (has_term and get("loss.beta") > 0):
            refuse("optimizer.dot", f"method {name!r} with loss.alpha {get('loss.alpha')} and loss.beta "
                                    f"{get('loss.beta')} has no distillation loss for DOT to keep apart from CE")
        check_dot_settings(get("optimizer.momentum"), get("optimizer.dot_delta"), get("optimizer.nesterov"))

    notes = []
    if not method.uses_teacher:
        notes += [f"teacher.{key}={shown(get(f'teacher.{key}'))} (method {name!r} uses no teacher)"
                  for key in ("checkpoint", "arch") if get(f"teacher.{key}")]
    for other in sorted(set(config.keys()) & set(METHODS) - {name}):
        section, other_defaults = config[other], METHODS[other].defaults
        changed = [f"{key}={shown(section[key])}" for key in section.keys()
                   if key not in other_defaults or section[key] != other_defaults[key]]
        if changed:
            notes.append(f"config.{other} ({', '.join(changed)}): the method is {name!r}, not {other!r}")
    return notes


def check_run_config(config) -> list[str]:
    """Every engine value against its spec, then the settings that cannot take effect; returns the notes of
    settings carried unused (`unused_settings`). The selected method's section is checked when the method is
    made (`jaxkd.methods.get_method`)."""
    check_engine_values(config)
    return unused_settings(config)
