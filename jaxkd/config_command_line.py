"""The command line of jaxkd's config-driven commands (`jaxkd.train`, `jaxkd.bench`): `--config FILE[:ARG]`
with `--config.key=value` overrides (ml_collections, locked: a key typo is an error), plus each command's own
flags. Every mistake becomes one UserError line."""

from typing import Callable

from jaxkd.errors import UserError


def config_error_line(error: Exception) -> str:
    """One line out of absl / ml_collections errors, which carry tracebacks and escaped newlines."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    text = text.replace("\\n", "\n").replace("\\'", "'")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errno_lines = [line for line in lines if line.startswith("[Errno")]
    if errno_lines:
        return errno_lines[0]
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1]  # the exception the config file raised
    return " ".join(lines)


def unknown_key_line(argv, line: str) -> str:
    """The error line of an override naming a key the config lacks (ml_collections says only "'lr'", or adds a
    near spelling at the same level): the override, and the config's keys of that name at other levels
    (`--config.lr` -> optimizer.lr)."""
    from absl import flags

    name = line.split()[0].strip("'\"")
    overrides = [arg for arg in argv if arg.startswith("--config.")
                 and name in arg.partition("=")[0].removeprefix("--config.").split(".")]
    if not overrides or "Did you mean" in line:
        return line
    base_argv = [arg for arg in argv if not arg.startswith("--config.")]
    flag_values = config_flag_values(base_argv)
    try:
        flag_values(base_argv, known_only=True)
        same_name = [key for key in dotted_keys(flag_values.config) if key.split(".")[-1] == name]
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError):
        same_name = []
    hint = f"; did you mean {' or '.join(f'--config.{key}' for key in same_name)}?" if same_name else ""
    return f"the config has no key {name!r} ({overrides[0].partition('=')[0]}){hint}"


def config_flag_values(argv):
    """absl FlagValues holding the `--config` flag (locked: a key typo is an error) for `argv`."""
    from absl import flags
    from ml_collections import config_flags

    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "a config file: configs/NAME.py[:ARG]", flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    return flag_values


def dotted_keys(config, prefix: str = "") -> list[str]:
    """Every leaf key of a ConfigDict, dotted ("optimizer.lr")."""
    keys = []
    for key, value in config.items():
        keys += dotted_keys(value, f"{prefix}{key}.") if hasattr(value, "items") else [prefix + key]
    return keys


def parse_config_command_line(argv, define_flags: Callable, usage: str):
    """The parsed absl FlagValues of `argv`: `--config` and what `define_flags(flag_values)` defines. A bad
    flag, value, config file or config key, or a missing `--config`, raises UserError (`usage` for the last)."""
    from absl import flags

    flag_values = config_flag_values(argv)
    define_flags(flag_values)
    try:
        flag_values(argv)
        if flag_values.config is not None:
            flag_values.config.keys()  # a config file that failed to load raises only when first used
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError) as error:
        line = config_error_line(error)
        key_error = error if isinstance(error, KeyError) else error.args[0] if error.args else None
        if isinstance(key_error, KeyError) and key_error.args:
            line = unknown_key_line(argv, config_error_line(key_error))
        raise UserError(f"bad command line or config: {line}") from None
    if flag_values.config is None:
        raise UserError(usage)
    return flag_values
