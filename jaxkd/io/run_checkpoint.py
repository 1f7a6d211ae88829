"""Train-state checkpoints of a run in `WORKDIR/checkpoints`, with Orbax's CheckpointManager: named by the global
step, the whole `TrainState` plus the run's progress (epoch, best accuracy), saved asynchronously by every process.

Orbax commits a checkpoint only once complete, so an interrupted save never replaces the last good one. Before
it commits, process 0 writes `jaxkd_manifest.json` (size and SHA-256 of each file); restore verifies the newest
checkpoint against it and sets damaged ones aside, resuming from the newest intact one. A save that fails is one
`OutputError`, raised by the call that sees it (`save`, or `check` at the loop's next metrics fetch, for Orbax's
background part). What a run guarantees under each fault: docs/faults.md."""

import contextlib
import hashlib
import json
import time

import jax
import orbax.checkpoint as ocp

from jaxkd.engine import distributed
from jaxkd.errors import OutputError, UserError, output_error, write_errors
from jaxkd.io.orbax_logs import quiet_orbax_failures
from jaxkd.io.paths import absolute

quiet_orbax_failures()  # a failed save is reported as one line, not as Orbax's logged tracebacks
SAVE_WAIT_SECONDS = 1800.0  # the longest the run waits for a checkpoint still being written

MANIFEST = "jaxkd_manifest.json"
MARKER = ".checkpointed"  # in the workdir: the run has committed a checkpoint, with a manifest
UNLISTED = {MANIFEST, "_CHECKPOINT_METADATA", "commit_success.txt"}  # the step's own files left out of it


def _files(directory, prefix: str = "") -> dict:
    """{relative path: path} of every file under `directory` (local or cloud), recursively."""
    files = {}
    for entry in directory.iterdir():
        if entry.is_dir():
            files.update(_files(entry, f"{prefix}{entry.name}/"))
        else:
            files[prefix + entry.name] = entry
    return files


def _digest(path) -> tuple[int, str]:
    """(size, SHA-256 hex) of a file."""
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 22):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def write_manifest(step_directory) -> None:
    """Writes the manifest of the checkpoint files in `step_directory` (before Orbax commits it)."""
    files = {name: dict(zip(("size", "sha256"), _digest(path)))
             for name, path in sorted(_files(step_directory).items()) if name not in UNLISTED}
    (step_directory / MANIFEST).write_text(json.dumps({"files": files}, indent=0))


def damage(step_directory, manifest_due: bool) -> str | None:
    """What is wrong with the checkpoint in `step_directory` against its manifest (None: intact, or no manifest
    and none is due: restored unverified)."""
    try:
        listed = json.loads((step_directory / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"{MANIFEST} is missing" if manifest_due else None
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    present = _files(step_directory)
    for name, expected in listed.items():
        if name not in present:
            return f"{name} is missing"
        size, sha256 = _digest(present[name])
        if size != expected["size"]:
            return f"{name} holds {size} bytes, {expected['size']} were written"
        if sha256 != expected["sha256"]:
            return f"{name} differs from what was written (SHA-256)"
    return None


def saved_state_metadata(workdir, subdirectory: str = "checkpoints") -> dict | None:
    """The train state's array metadata (shape, dtype, sharding: `TrainState` fields as a nested dict) in the
    newest checkpoint of `WORKDIR/subdirectory`, read from Orbax's metadata files without restoring an array, so
    that a state this run cannot restore is refused before anything compiles; None without a checkpoint, or when
    its metadata cannot be read (a damaged one: `RunCheckpoints.latest_step` deals with it)."""
    directory = absolute(workdir) / subdirectory
    try:
        steps = sorted(int(entry.name) for entry in directory.iterdir() if entry.name.isdigit())
    except OSError:  # no such folder
        return None
    if not steps:
        return None
    try:
        return dict(ocp.PyTreeCheckpointHandler().metadata(directory / str(steps[-1]) / "state").tree)
    except (OSError, ValueError, KeyError, TypeError):  # damaged: the restore's verification names it
        return None


class RunCheckpoints:
    def __init__(self, workdir, keep: int, subdirectory: str = "checkpoints"):
        """`subdirectory`: "checkpoints" for the train state, "init_checkpoints" for an init stage's."""
        self.directory = absolute(workdir) / subdirectory
        self.marker = absolute(workdir) / MARKER
        self._saving = []  # steps whose saves are under way, oldest first: their manifests are still to write
        self._verified = False
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._write_manifest)))
        self.failed = False  # a failed save was reported: closing raises it no more
        self.stalled = False  # a save outlived SAVE_WAIT_SECONDS: not waited for again

    def latest_step(self) -> int | None:
        """The newest checkpoint's step (None: none). The first call verifies the checkpoints (module docstring)
        and sets the damaged ones aside; every process calls it at the same point."""
        if not self._verified:
            self._verify()
            self._verified = True
        return self.manager.latest_step()

    def _verify(self) -> None:
        """Process 0 checks the checkpoints newest first until one is intact, moves the damaged newer ones to
        `<directory>.damaged/` (one line) and tells the other processes; no intact one: UserError, nothing moved."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return
        verdict, damaged = -1, []  # the step to resume from (-1: none intact)
        if distributed.is_primary():
            manifest_due = self.marker.exists()
            for step in steps:
                problem = damage(self.directory / str(step), manifest_due)
                if problem is None:
                    verdict = step
                    break
                damaged.append(f"step {step}: {problem}")
        verdict = distributed.agree(verdict)
        if verdict < 0:
            raise UserError(f"{self.directory}: no intact checkpoint ({'; '.join(damaged) or 'see process 0'}); "
                            f"nothing was changed: restore the checkpoints from a copy, or delete the workdir to "
                            f"start the run anew")
        if verdict == steps[0]:
            return
        aside = self.directory.parent / f"{self.directory.name}.damaged"
        if distributed.is_primary():
            aside.mkdir(parents=True, exist_ok=True)
            for step in steps[:steps.index(verdict)]:
                target = aside / str(step)
                suffix = 1
                while target.exists():  # a step damaged before
                    target, suffix = aside / f"{step}.{suffix}", suffix + 1
                (self.directory / str(step)).rename(target)
            distributed.print_once(f"warning: damaged checkpoint{'s' if len(damaged) > 1 else ''} in "
                                   f"{self.directory} ({'; '.join(damaged)}): moved to {aside}; resuming from step "
                                   f"{verdict}, the steps after it are redone", flush=True)
        distributed.barrier("damaged checkpoints set aside")
        self.manager.reload()

    def _write_manifest(self) -> None:
        """Orbax's post-finalization callback (process 0, background thread, before the commit): the manifest
        of the oldest save under way, and the workdir's marker on the first."""
        names = {entry.name for entry in self.directory.iterdir()}
        for index, step in enumerate(self._saving):  # a save Orbax declined (nothing written) is passed over
            temporary = [name for name in names if name.startswith(f"{step}.orbax-checkpoint-tmp")]
            folder = temporary[0] if len(temporary) == 1 else str(step)  # cloud storage: the final folder itself
            if (len(temporary) == 1 or str(step) in names) and not (self.directory / folder / MANIFEST).exists():
                del self._saving[:index + 1]
                break
        else:
            raise RuntimeError(f"{self.directory}: no folder holds the save of step(s) {self._saving} under way")
        write_manifest(self.directory / folder)
        if not self.marker.exists():
            self.marker.write_text(f"{self.directory.name}/{step} was this run's first checkpoint: the run has "
                                   f"checkpoints to resume from, each with its {MANIFEST}\n")

    def save(self, state, progress: dict) -> None:
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return
        self._saving.append(step)
        with self._writing():
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)))

    @contextlib.contextmanager
    def _writing(self):
        """Orbax's failure of a save (this call's, or a background save's that surfaces here) as one OutputError;
        after one was reported, closing ignores it."""
        try:
            yield
        except write_errors() as error:
            if self.failed:
                return
            self.failed = True
            raise output_error(self.directory, "a checkpoint", error) from None

    def check(self) -> None:
        """Raises the failure of a background save that has ended, without waiting for one still running."""
        if not self.manager.is_saving_in_progress():
            with self._writing():
                self.manager.wait_until_finished()

    def restore(self, template_state):
        """(state, progress) of the latest checkpoint; `template_state` gives structure, shapes and shardings."""
        step = self.manager.latest_step()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_state)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()))
        except Exception as error:  # a verified checkpoint restores; one written before manifests may not
            if (self.directory / str(step) / MANIFEST).exists():
                raise
            reason = (str(error).strip().splitlines() or [""])[0][:200]
            raise UserError(f"{self.directory / str(step)}: cannot be restored ({type(error).__name__}: {reason}); "
                            f"it predates jaxkd's checkpoint manifests, so it was not verified: move it out of "
                            f"{self.directory} to resume from an older checkpoint") from None
        return restored["state"], dict(restored["progress"])

    def wait_until_saved(self) -> None:
        """Returns once every save started so far is complete on disk (saves are asynchronous); a save still
        running after SAVE_WAIT_SECONDS (a stalled disk or upload) is an OutputError."""
        self._wait_for_saves()
        with self._writing():
            self.manager.wait_until_finished()

    def _wait_for_saves(self) -> None:
        deadline = time.monotonic() + SAVE_WAIT_SECONDS
        while not self.failed and self.manager.is_saving_in_progress():
            if time.monotonic() > deadline:
                self.failed = self.stalled = True
                raise OutputError(f"{self.directory}: a checkpoint is still being written after "
                                  f"{SAVE_WAIT_SECONDS:g} s (a stalled disk or upload); the complete ones are kept")
            time.sleep(0.05)

    def close(self) -> None:
        try:
            self._wait_for_saves()
            with self._writing():
                self.manager.wait_until_finished()
        finally:
            if not self.stalled:  # Orbax's close would wait for the stalled save
                with self._writing():
                    self.manager.close()
