"""Experiment tracking with Weights & Biases (`config.wandb`, off by default): the rows of `metrics.jsonl`, sent
through the real `wandb` client as `{kind}/{name}` at the row's step (the names TensorBoard shows).

`config.wandb.mode` is wandb's: "online" (needs an account: `wandb login` or WANDB_API_KEY), "offline" (a run
directory to upload later with `wandb sync`), "disabled" (the default: wandb is not imported). The run's id is
derived from the workdir, so a resumed run continues the same wandb run. wandb keeps its files in
`WORKDIR/wandb` for a local workdir, and in `./wandb` (or WANDB_DIR) for a `gs://` one. Rows at negative steps
(an init stage's, `jaxkd.engine.init_stage`, and the teacher's row of a run with one) stay out: wandb steps start at 0.

A row wandb refuses (its service process died) and a close that does not end within CLOSE_TIMEOUT_SECONDS are one
`OutputError`. `close` returns once wandb has every row: `run.finish()` alone returns before wandb's service has
written the last rows to an offline run's file (on a loaded machine a read right after missed the last two steps),
so the service is shut down too (`wandb.teardown`, which waits for it to exit).
"""

import hashlib
import threading

from jaxkd.errors import OutputError, UserError
from jaxkd.io.paths import is_url

MODES = ("disabled", "offline", "online")
CLOSE_TIMEOUT_SECONDS = 300.0  # for wandb to write (offline) or upload (online) what it has not yet


def check_wandb_settings(settings) -> None:
    """One line for a mode wandb does not have, or wandb asked for and not installed."""
    if settings.mode not in MODES:
        raise UserError(f"wandb.mode must be one of {', '.join(MODES)}, got {settings.mode!r}")
    if settings.mode != "disabled":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError("config.wandb.mode is set but the wandb client is not installed: "
                            "pip install 'jaxkd[wandb]'") from None


def run_id(workdir) -> str:
    """A wandb run id fixed by the workdir (its absolute path or URL)."""
    return "jaxkd-" + hashlib.sha256(str(workdir).encode()).hexdigest()[:16]


class WandbLog:
    def __init__(self, settings, workdir, run_config: dict):
        import wandb

        self._wandb = wandb
        directory = None if is_url(workdir) else str(workdir)
        self.where = f"wandb ({settings.mode}, run {run_id(workdir)} in {directory or './wandb'})"
        self.run = wandb.init(project=settings.project or None, entity=settings.entity or None,
                              mode=settings.mode, dir=directory, id=run_id(workdir), resume="allow",
                              name=str(workdir).rstrip("/").split("/")[-1], config=run_config,
                              settings=wandb.Settings(console="off", silent=True))

    def write(self, step: int, kind: str, values: dict) -> None:
        if step >= 0:
            try:
                self.run.log({f"{kind}/{name}": value for name, value in values.items()}, step=int(step))
            except Exception as error:  # wandb's service died or refused the row
                raise OutputError(f"{self.where}: cannot log the metrics at step {step}: "
                                  f"{type(error).__name__}: {error}") from None

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Finishes the run and waits, at most `timeout` seconds, until wandb's service has written (offline) or
        uploaded (online) every row and exited; one OutputError if it fails or does not end in time."""
        outcome = {}

        def finish():
            try:
                self.run.finish()
                self._wandb.teardown()
            except BaseException as error:  # reported by the waiting thread
                outcome["error"] = error

        worker = threading.Thread(target=finish, name="wandb-finish", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            raise OutputError(f"{self.where}: did not finish within {timeout:.0f} s: its last rows may be missing")
        if "error" in outcome:
            error = outcome["error"]
            raise OutputError(f"{self.where}: cannot finish the run: {type(error).__name__}: {error}")
