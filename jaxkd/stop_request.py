"""Stopping a run cleanly: SIGTERM (preemption) and SIGINT (Ctrl-C) turned into a decision the train loop takes
between two dispatches; the loop then saves a checkpoint at the current step and exits with the signal's
conventional status (143, 130), and the same command resumes the run exactly.

One process: a signal handler sets a flag (a second Ctrl-C interrupts at once, as usual). Several processes:
JAX's preemption sync point, which tells every process to stop after the same dispatch whichever of them got
SIGTERM (its notifier handles SIGTERM); Ctrl-C keeps its default there, since the processes could not agree on
the step (stop a multi-process run with SIGTERM).
"""

import signal

from jaxkd import distributed

EXIT_STATUS = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + the signal's number


class StopRequest:
    """Whether the loop should stop before its next dispatch; installs its handlers until `restore`."""

    def __init__(self):
        self.signal: signal.Signals | None = None  # the signal that asked to stop
        self._dispatches = 0
        self._multiprocess = distributed.is_multiprocess()
        handled = () if self._multiprocess else (signal.SIGTERM, signal.SIGINT)
        # a signal the process was started ignoring (a background job's SIGINT) stays ignored, as Python does
        handled = [signum for signum in handled if signal.getsignal(signum) is not signal.SIG_IGN]
        self._previous = {signum: signal.signal(signum, self._handle) for signum in handled}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.signal]

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum)
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, self._previous[signal.SIGINT])

    def before_dispatch(self) -> bool:
        """Whether to stop instead of running the next train program (call once before each). Every process
        makes the same sequence of calls, so the sync point counts calls, not steps."""
        if self._multiprocess and not self.requested and distributed.preemption_requested(self._dispatches):
            self.signal = signal.SIGTERM
        self._dispatches += 1
        return self.requested

    def restore(self):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
