"""The two error types a command reports in one line: `UserError`, a mistake the user can fix (paths, names,
shapes, config keys), and `OutputError`, an output that could not be written (a full disk, an I/O error, a bucket
refusing an upload, a background writer that failed).

Command-line entry points print the message as a single `error: ...` line and exit with status 2 (UserError) or
74 (OutputError, EX_IOERR of sysexits.h); any other exception is a bug and keeps its traceback.
"""

import logging
import os
import re
import sys

USER_ERROR_STATUS = 2
OUTPUT_ERROR_STATUS = 74  # EX_IOERR


class UserError(Exception):
    """A problem with the user's input, described in one actionable line."""


class OutputError(Exception):
    """A write that failed (not the user's mistake), described in one line naming the path and the cause."""


def io_cause(error: BaseException) -> str:
    """The cause of a failed write in a few words: an OSError's strerror (ENOSPC: "No space left on device"), the
    OS error inside a TensorStore/Orbax message (`[os_error_code='28']`), else the exception's first line."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    code = re.search(r"os_error_code='?(\d+)", text)
    if code:
        return os.strerror(int(code.group(1)))
    lines = text.strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(error).__name__}: {first[:300]}" if first else type(error).__name__


def write_errors() -> tuple:
    """The exception types of a failed write: OSError (a full disk, an I/O error), ValueError and RuntimeError
    (TensorStore's and PyTorch's wrappers of one) and, once the cloud client is loaded, its errors (a bucket
    refusing an upload). Anything else is a bug and keeps its traceback."""
    types = [OSError, ValueError, RuntimeError]
    cloud = sys.modules.get("google.api_core.exceptions")
    if cloud is not None:
        types.append(cloud.GoogleAPIError)
    return tuple(types)


def output_error(path, what: str, error: BaseException) -> OutputError:
    """`OutputError("{path}: cannot write {what}: {cause}")` for `error`, the exception a write raised."""
    return OutputError(f"{path}: cannot write {what}: {io_cause(error)}")


class _OrbaxErrorLogs(logging.Filter):
    """Drops the ERROR records Orbax logs (through absl) when a save fails in one of its threads: each failure
    also reaches the caller as an exception (jaxkd.io.run_checkpoint, jaxkd.io.model_checkpoint), which the command
    reports as its one `error:` line, while these logs are a page of tracebacks per failed save."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR or f"{os.sep}orbax{os.sep}" not in record.pathname


def _drop_closed_loop_callbacks(previous_hook):
    """A `sys.unraisablehook` that drops "Event loop is closed": after one write of an Orbax save fails, its
    event loop closes and TensorStore's other writes, ending later, report into it (tens of such tracebacks per
    failed save); every other unraisable exception goes to `previous_hook`."""

    def hook(unraisable):
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous_hook(unraisable)

    hook.drops_closed_loop_callbacks = True
    return hook


def quiet_orbax_failures() -> None:
    """Installs `_OrbaxErrorLogs` on the absl logger and `_drop_closed_loop_callbacks`, once (the modules that
    save with Orbax call it as they load)."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _OrbaxErrorLogs) for f in logger.filters):
        logger.addFilter(_OrbaxErrorLogs())
    if not getattr(sys.unraisablehook, "drops_closed_loop_callbacks", False):
        sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)


def run_command(body, *args) -> int:
    """Runs a command-line entry point's body: a UserError becomes one `error: ...` line on stderr and exit
    status 2, an OutputError one line and status 74; success is 0; anything else is a bug and keeps its
    traceback."""
    try:
        body(*args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_STATUS
    except OutputError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return OUTPUT_ERROR_STATUS
    return 0


def exit_process(status: int):
    """`sys.exit(status)` for a command's `__main__`, except after an OutputError: then the process ends at once
    (`os._exit`, stdout and stderr flushed), so that a background writer that failed or hangs (Orbax's save
    threads, wandb's service) can neither block the exit nor print tracebacks while Python shuts down."""
    if status == OUTPUT_ERROR_STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
