"""Stopping a run cleanly: SIGTERM (preemption) and SIGINT (Ctrl-C) turned into a decision the train loop takes
between two dispatches; the loop then saves a checkpoint at the current step and exits with the signal's
conventional status (143, 130), and the same command resumes the run exactly.

One process: a signal handler sets a flag and says at once what the run does now (it finishes its current
host call, which may be compiling, then saves); a second Ctrl-C interrupts at once (KeyboardInterrupt, which
`jaxkd.train` turns into one line), except while the checkpoint is being written: then it says that the run
waits for the write, and waits (an interrupted write would leave a `-tmp` folder and lose the step). Several processes:
JAX's preemption sync point, which tells every process to stop after the same dispatch whichever of them got
SIGTERM (its notifier handles SIGTERM); Ctrl-C keeps its default there, since the processes could not agree on
the step (stop a multi-process run with SIGTERM).
"""

import contextlib
import signal
import sys

from jaxkd.engine import distributed

EXIT_STATUS = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + the signal's number


class StopRequest:
    """Whether the loop should stop before its next dispatch; installs its handlers until `restore`."""

    def __init__(self):
        self.signal: signal.Signals | None = None  # the signal that asked to stop
        self._dispatches = 0
        self._saving: str | None = None  # what is being saved, while a stop's checkpoint is written
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
        if self.signal is None:
            self.signal = signal.Signals(signum)
            self._tell(f"{self.signal.name}: stopping: the current step finishes first (it may be compiling), then "
                       f"a checkpoint is saved" + ("; Ctrl-C again to stop without saving" if signum == signal.SIGINT
                                                   else ""))
        elif signum == signal.SIGINT:
            if self._saving is None:  # a second Ctrl-C interrupts at once
                raise KeyboardInterrupt
            self._tell(f"SIGINT again: waiting for {self._saving} to be written (stopping now would lose it)")

    @staticmethod
    def _tell(text: str) -> None:
        """A line on stderr from the signal handler (it may run in the middle of a print to stdout)."""
        try:
            print(text, file=sys.stderr, flush=True)
        except RuntimeError:  # stderr was being written when the signal came: a reentrant write
            pass

    def save_and_exit(self, checkpoints, state, progress: dict, what: str, say) -> None:
        """Saves `state` in `checkpoints` (a RunCheckpoints), waits until it is written, then exits with the
        signal's status. `what` ("a checkpoint at step N") is said before and after: the "saved" line comes
        only once Orbax's asynchronous write has finished, and a Ctrl-C meanwhile waits for it."""
        say(f"{self.signal.name}: saving {what}...")
        with self._writing(what):
            checkpoints.save(state, progress)
            checkpoints.wait_until_saved()
        say(f"{self.signal.name}: saved {what}; run the same command to resume")
        raise SystemExit(self.exit_status)

    @contextlib.contextmanager
    def _writing(self, what: str):
        self._saving = what
        try:
            yield
        finally:
            self._saving = None

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
