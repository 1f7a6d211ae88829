"""The one error type for mistakes a user can fix (paths, names, shapes, config keys).

Command-line entry points print its message as a single line and exit with status 2; any other exception is a
bug and keeps its traceback.
"""

import sys


class UserError(Exception):
    """A problem with the user's input, described in one actionable line."""


def run_command(body, *args) -> int:
    """Runs a command-line entry point's body: a UserError becomes one `error: ...` line on stderr and exit
    status 2; success is 0; anything else is a bug and keeps its traceback."""
    try:
        body(*args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
