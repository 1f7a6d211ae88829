"""The two error types a command reports in one line: `UserError`, a mistake the user can fix (paths, names,
shapes, config keys), and `OutputError`, an output that could not be written (a full disk, an I/O error, a bucket
refusing an upload, a background writer that failed).

Command-line entry points print the message as a single `error: ...` line and exit with status 2 (UserError) or
74 (OutputError, EX_IOERR of sysexits.h); any other exception is a bug and keeps its traceback.
"""

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
