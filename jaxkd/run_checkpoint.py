"""Train-state checkpoints of a run, in `WORKDIR/checkpoints` with Orbax's CheckpointManager.

Each checkpoint is named by the global step and holds the whole `TrainState` plus a small JSON record of the
run's progress (epoch, best accuracy). Orbax writes to a temporary directory and renames it on completion, so an
interrupted save never replaces the last good checkpoint (in cloud storage, where nothing renames, a checkpoint
counts once Orbax has written its commit marker); saves are asynchronous and `close` waits for them. Every
process of a multi-process run takes part in each save.
"""

import jax
import orbax.checkpoint as ocp

from jaxkd.paths import absolute


class RunCheckpoints:
    def __init__(self, workdir, keep: int, subdirectory: str = "checkpoints"):
        """`subdirectory`: "checkpoints" for the train state, "init_checkpoints" for an init stage's."""
        self.directory = absolute(workdir) / subdirectory
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state, progress: dict) -> None:
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)))

    def restore(self, template_state):
        """(state, progress) of the latest checkpoint; `template_state` gives structure, shapes and shardings."""
        step = self.manager.latest_step()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["progress"])

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
