"""What a config value may be: each key's spec (`positive_int`, `fraction`, `one_of(...)`, ...) and the one-line
refusal of a value outside it (`--config.ab.init_epochs=-1: must be an integer >= 0`). Methods declare their
settings' specs with these (`Method.specs`); the engine's keys are in jaxkd/config/checks.py."""

from __future__ import annotations

import dataclasses
import math
import numbers

from jaxkd.errors import UserError
from jaxkd.models import canonical_name


def shown(value) -> str:
    """A config value as written on the command line: `150,180,210` for a tuple, `''` for an empty string."""
    if isinstance(value, (tuple, list)):
        return ",".join(shown(item) for item in value) if value else "()"
    if isinstance(value, str):
        return value if value else "''"
    return str(value)


def _number_text(number) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


class Spec:
    """What one config key accepts. `problem(value)` is None for an accepted value, else what is wrong with
    it, e.g. "must be an integer >= 0"."""

    def problem(self, value) -> str | None:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Number(Spec):
    """An integer (not a bool) or a finite number (int or float), within [low, high] (ends open or closed;
    None: unbounded)."""

    integer: bool
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    @property
    def allowed(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            return (f"{kind} in {'(' if self.low_open else '['}{_number_text(self.low)}, "
                    f"{_number_text(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_number_text(self.low)}"
        return kind

    def problem(self, value) -> str | None:
        kinds = numbers.Integral if self.integer else numbers.Real
        ok = (isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
              and (self.low is None or (value > self.low if self.low_open else value >= self.low))
              and (self.high is None or (value < self.high if self.high_open else value <= self.high)))
        return None if ok else f"must be {self.allowed}"


@dataclasses.dataclass(frozen=True)
class OneOf(Spec):
    choices: tuple[str, ...] | tuple[int, ...]

    def problem(self, value) -> str | None:
        kind = type(self.choices[0])
        if type(value) is kind and value in self.choices:  # `type`: True is not the integer 1 here
            return None
        return f"must be one of {', '.join(map(str, self.choices))}"


@dataclasses.dataclass(frozen=True)
class Flag(Spec):
    def problem(self, value) -> str | None:
        return None if isinstance(value, bool) else "must be True or False"


@dataclasses.dataclass(frozen=True)
class Text(Spec):
    """Any string (a path, a project name): a type check only."""

    def problem(self, value) -> str | None:
        return None if isinstance(value, str) else "must be a string"


@dataclasses.dataclass(frozen=True)
class ModelName(Spec):
    """A name of jaxkd.models (any alias); with `optional`, also "" (the config leaves it to the checkpoint)."""

    optional: bool = False

    def problem(self, value) -> str | None:

        if not isinstance(value, str):
            return "must be a model name" + (" or ''" if self.optional else "")
        if self.optional and not value:
            return None
        try:
            canonical_name(value)
        except UserError as error:
            return str(error)
        return None


@dataclasses.dataclass(frozen=True)
class ModelNames(Spec):
    """None, or one or more model names (a tuple, or comma-separated: `--config.dml.peers=a,b` arrives as
    ("a,b",))."""

    def problem(self, value) -> str | None:
        if value is None:
            return None
        items = (value,) if isinstance(value, str) else value
        allowed = "must be one or more model names, comma-separated, or None"
        if not isinstance(items, (tuple, list)) or not all(isinstance(item, str) for item in items):
            return allowed
        names = [name.strip() for item in items for name in item.split(",") if name.strip()]
        if not names:
            return allowed
        return next(filter(None, (ModelName().problem(name) for name in names)), None)


@dataclasses.dataclass(frozen=True)
class Epochs(Spec):
    """Distinct 1-based epoch numbers (a tuple; none for no decay)."""

    def problem(self, value) -> str | None:
        ok = (isinstance(value, (tuple, list)) and all(Number(True, 1).problem(item) is None for item in value)
              and len(set(value)) == len(value))
        return None if ok else "must be distinct epochs >= 1, comma-separated (e.g. 150,180,210), or () for none"


positive_int = Number(True, 1)
non_negative_int = Number(True, 0)
positive_float = Number(False, 0, low_open=True)
non_negative_float = Number(False, 0)
fraction = Number(False, 0, 1)  # [0, 1]
flag = Flag()
text = Text()


def one_of(*choices: str | int) -> OneOf:
    return OneOf(tuple(choices))


def check_value(key: str, value, spec: Spec) -> None:
    """One line naming `--config.KEY=VALUE` and what is allowed, when `value` is outside `spec`."""
    problem = spec.problem(value)
    if problem is not None:
        raise UserError(f"--config.{key}={shown(value)}: {problem}")


def check_settings(section: str, settings: dict, specs: dict[str, Spec]) -> None:
    """A method's settings (`config.<section>` over its defaults) against its specs."""
    for name, spec in specs.items():
        if name in settings:
            check_value(f"{section}.{name}", settings[name], spec)
