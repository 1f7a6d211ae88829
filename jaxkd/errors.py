"""The one error type for mistakes a user can fix (paths, names, shapes, config keys).

Command-line entry points print its message as a single line and exit with status 2; any other exception is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, described in one actionable line."""
