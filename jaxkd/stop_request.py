"""Preemption: SIGTERM turned into a decision the train loop takes between two dispatches.

One process: a signal handler sets a flag. Several processes: JAX's preemption sync point, which tells every
process to stop after the same dispatch whichever of them got the signal (its notifier handles SIGTERM). The
loop then saves a checkpoint at the current step and exits with status 143.
"""

import signal

from jaxkd import distributed


class StopRequest:
    """Whether the loop should stop before its next dispatch; installs its SIGTERM handler until `restore`."""

    def __init__(self):
        self.requested = False
        self._dispatches = 0
        self._multiprocess = distributed.is_multiprocess()
        self._previous = None if self._multiprocess else signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def before_dispatch(self) -> bool:
        """Whether to stop instead of running the next train program (call once before each). Every process
        makes the same sequence of calls, so the sync point counts calls, not steps."""
        if self._multiprocess and not self.requested:
            self.requested = distributed.preemption_requested(self._dispatches)
        self._dispatches += 1
        return self.requested

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
