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


def parse_config_command_line(argv, define_flags: Callable, usage: str):
    """The parsed absl FlagValues of `argv`: `--config` and what `define_flags(flag_values)` defines. A bad
    flag, value, config file or config key, or a missing `--config`, raises UserError (`usage` for the last)."""
    from absl import flags
    from ml_collections import config_flags

    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "a config file: configs/NAME.py[:ARG]", flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    define_flags(flag_values)
    try:
        flag_values(argv)
        if flag_values.config is not None:
            flag_values.config.keys()  # a config file that failed to load raises only when first used
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError) as error:
        raise UserError(f"bad command line or config: {config_error_line(error)}") from None
    if flag_values.config is None:
        raise UserError(usage)
    return flag_values
