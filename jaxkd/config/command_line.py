"""The command line of jaxkd's config-driven commands (`jaxkd.train`, `jaxkd.tools.bench`): `--config FILE[:ARG]`
with `--config.key=value` overrides (ml_collections, locked: a key typo is an error), plus each command's own
flags. Every mistake becomes one UserError line."""

import re
import sys
from pathlib import Path
from typing import Callable

from jaxkd.errors import UserError
from jaxkd.io.workdir import MOVED_KEYS
from jaxkd.methods import METHODS
from jaxkd.models import ALIASES, all_architectures

HELP_FLAGS = ("-h", "--help", "-help", "--helpfull", "--helpshort")
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # of a source checkout, which holds configs/
DEFAULT_CONFIG = Path(__file__).with_name("default.py")  # the defaults every config starts from


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
    (`--config.lr` -> optimizer.lr); for a key that moved (MOVED_KEYS), its new name."""
    from absl import flags

    name = line.split()[0].strip("'\"")
    overrides = [arg for arg in argv if arg.startswith("--config.")
                 and name in arg.partition("=")[0].removeprefix("--config.").split(".")]
    moved = [key for key in (arg.partition("=")[0].removeprefix("--config.") for arg in overrides) if key in MOVED_KEYS]
    if moved:
        return f"--config.{moved[0]} is now --config.{MOVED_KEYS[moved[0]]}"
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


def config_file_argument(argv) -> str | None:
    """The file part of `--config FILE[:ARG]` / `--config=FILE[:ARG]` in `argv`, or None."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1].split(":")[0]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1].split(":")[0]
    return None


def with_project_config(argv) -> list:
    """`argv` with a relative `--config` file that does not exist from the working directory but does in the
    project (`configs/demo.py` run from another folder) made the project's: the project's own configs load by
    the relative path its README gives, from anywhere. A file that exists where the user is always wins."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            index, prefix, value = i + 1, "", argv[i + 1]
        elif arg.startswith("--config="):
            index, prefix, value = i, "--config=", arg.split("=", 1)[1]
        else:
            continue
        file, colon, rest = value.partition(":")
        path = Path(file)
        if file and not path.is_absolute() and not path.expanduser().exists() and (PROJECT_ROOT / path).is_file():
            argv[index] = f"{prefix}{PROJECT_ROOT / path}{colon}{rest}"
        break
    return argv


def make_config_package_importable(argv) -> None:
    """When the `--config` file lies in a package folder (the project's `configs/`, with `__init__.py`), puts
    the folder above it first on `sys.path`, so that the file's `from configs import default` finds its own
    siblings from any working directory. (Installed, the project's configs are importable anyway.)"""
    file_argument = config_file_argument(argv)
    if not file_argument:
        return
    folder = Path(file_argument).expanduser().resolve().parent
    if (folder / "__init__.py").is_file() and str(folder.parent) not in sys.path:
        sys.path.insert(0, str(folder.parent))


def config_flag_values(argv):
    """absl FlagValues holding the `--config` flag (locked: a key typo is an error) for `argv`."""
    from absl import flags
    from ml_collections import config_flags

    make_config_package_importable(argv)
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


def key_meanings(sources: list[Path]) -> dict[str, str]:
    """{dotted config key: its comment} read from config files' source: the comment at the end of the line that
    sets `config.KEY`, else the comment lines just above it (the later file wins)."""
    meanings = {}
    for source in sources:
        try:
            lines = source.read_text().splitlines()
        except OSError:
            continue
        above = []
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# "))
                continue
            match = re.match(r"config\.([\w.]+)\s*=[^#]*(?:#\s*(.*))?$", stripped)
            meaning = match and (match.group(2) or " ".join(above))
            if meaning:
                meanings[match.group(1)] = meaning
            above = []
    return meanings


def _shorten(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[:width - 3].rsplit(" ", 1)[0] + "..."


def help_text(argv, define_flags: Callable, usage: str) -> str:
    """The `--help` page of a config-driven command: its flags, then every key of the config (`--config` if
    given, else jaxkd/config/default.py) with its value and meaning, and the model and method names."""
    from absl import flags


    own_flags = flags.FlagValues()
    define_flags(own_flags)
    lines = [usage, "", "flags:", "  --config: a config file, configs/NAME.py[:ARG], then --config.KEY=VALUE to "
             "change any key below"]
    lines += [f"  --{name}: {flag.help}" for name, flag in sorted(own_flags._flags().items()) if name == flag.name]
    config_args = [arg for arg in argv if arg.startswith("--config=") or arg == "--config"]
    base_argv = [arg for arg in argv if arg not in HELP_FLAGS and not arg.startswith("--config.")]
    if config_args:
        flag_values = config_flag_values(base_argv)
        try:
            flag_values(base_argv, known_only=True)
            config = flag_values.config
            config.keys()
        except Exception as error:  # the config's own mistake: the same line a run would give
            raise UserError(f"bad command line or config: {config_error_line(error)}") from None
        config_file = Path(config_file_argument(argv))
    else:
        config_file = DEFAULT_CONFIG
        import importlib.util

        spec = importlib.util.spec_from_file_location("jaxkd_help_default_config", config_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
    meanings = key_meanings([DEFAULT_CONFIG, config_file])
    lines += ["", f"config keys of {config_file} (--config.KEY=VALUE):"]
    for key in dotted_keys(config):
        value = config
        for part in key.split("."):
            value = value[part]
        meaning = f"  # {_shorten(meanings[key])}" if meanings.get(key) else ""
        lines.append(f"  --config.{key}={value!r}{meaning}")
    lines += ["", f"models (config.model, config.teacher.arch): {', '.join(all_architectures())} (also "
              f"{', '.join(ALIASES)}; wrn-40-2, wrn_40_2 and any case)",
              f"methods (config.method): {', '.join(METHODS)}"]
    return "\n".join(lines)


def parse_config_command_line(argv, define_flags: Callable, usage: str):
    """The parsed absl FlagValues of `argv`: `--config` and what `define_flags(flag_values)` defines. A bad
    flag, value, config file or config key, or a missing `--config`, raises UserError (`usage` for the last).
    `--help` (or -h, --helpfull) prints `help_text` and exits with status 0."""
    from absl import flags

    argv = with_project_config(argv)
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print(help_text(argv, define_flags, usage))
        raise SystemExit(0)
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
