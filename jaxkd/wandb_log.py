"""Experiment tracking with Weights & Biases (`config.wandb`, off by default): the rows of `metrics.jsonl`, sent
through the real `wandb` client as `{kind}/{name}` at the row's step (the names TensorBoard shows).

`config.wandb.mode` is wandb's: "online" (needs an account: `wandb login` or WANDB_API_KEY), "offline" (a run
directory to upload later with `wandb sync`), "disabled" (the default: wandb is not imported). The run's id is
derived from the workdir, so a resumed run continues the same wandb run. wandb keeps its files in
`WORKDIR/wandb` for a local workdir, and in `./wandb` (or WANDB_DIR) for a `gs://` one. Rows at negative steps
(an init stage's, `jaxkd.init_stage`, and the teacher's row of a run with one) stay out: wandb steps start at 0.
"""

import hashlib

from jaxkd.errors import UserError
from jaxkd.paths import is_url

MODES = ("disabled", "offline", "online")


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
        self.run = wandb.init(project=settings.project or None, entity=settings.entity or None,
                              mode=settings.mode, dir=directory, id=run_id(workdir), resume="allow",
                              name=str(workdir).rstrip("/").split("/")[-1], config=run_config,
                              settings=wandb.Settings(console="off", silent=True))

    def write(self, step: int, kind: str, values: dict) -> None:
        if step >= 0:
            self.run.log({f"{kind}/{name}": value for name, value in values.items()}, step=int(step))

    def close(self) -> None:
        self.run.finish()
