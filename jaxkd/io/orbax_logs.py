"""Orbax's own reports of a failed save silenced, since jaxkd reports each as one line: a failure reaches the
caller as an exception (jaxkd.io.run_checkpoint, jaxkd.io.model_checkpoint, which install this as they load),
while Orbax logs a page of tracebacks per failed save and its closed event loop tens more."""

import logging
import os
import sys


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
