"""A training run's workdir: created once, identified by its `config.json`, and given the final models.

`config.json` pins the run: re-running the same command resumes it, and a different config in the same workdir
is refused (up to RESUME_MAY_CHANGE). At the end the student (and a method's extra models, DML's peers) are
written as model checkpoints (`model/`, `{name}/`) and as `.pth` files in the seed's layout.
"""

import copy
import datetime
import fcntl
import json
import os
import socket
from pathlib import Path

import jax

from jaxkd.engine import distributed
from jaxkd.engine.train_state import TrainState
from jaxkd.errors import UserError
from jaxkd.io.model_checkpoint import TRAINED_MODEL_DIR, save_model_checkpoint
from jaxkd.io.paths import as_path, is_url
from jaxkd.io.run_checkpoint import MARKER
from jaxkd.io.safe_write import write_text_atomically
from jaxkd.models import canonical_name

# Config keys a resumed run may change: logging (also to wandb), evaluation and checkpoint intervals, the run's
# length, and settings that change results by float rounding at most (dotted: a key of a section; a section's
# name: all its keys, also for runs whose config.json predates it).
RESUME_MAY_CHANGE = ("log_every_steps", "eval_every_epochs", "checkpoint_every_epochs", "keep_checkpoints",
                     "progress_bar", "epochs", "steps_per_dispatch", "crd.chunk_elements", "wandb",
                     "data.workers")
RESERVED_EXPORT_NAMES = {TRAINED_MODEL_DIR, "checkpoints", "tensorboard", "student", "wandb"}
# Config keys added after runs may have started, with the value that gives those runs' behaviour: a config.json
# written before a key existed compares as if it held that value, so such a run still resumes.
ADDED_KEYS = {"loss.logit_standardization": False, "optimizer.dot": False, "optimizer.dot_delta": 0.075,
              "data.tfds_name": "", "data.image_size": 224, "data.eval_resize": 256, "data.eval_crop": 224,
              "data.workers": 0, "data.train_split": "train", "data.eval_split": "", "data.skip_unreadable": False,
              "data.digits_size": 32, "crd.bank_layout": "replicated",
              "kdsvd.layout": "repdistiller"}  # a kdsvd section without it ran RepDistiller's term (methods/kdsvd.py)
# Config keys moved after runs may have started (old dotted key -> new): a config.json that holds the old key
# compares, resumes and reports as if it held the new one; a config or command line that sets the old key is
# refused with one line naming the new one.
MOVED_KEYS = {"saliencymix": "data.saliencymix", "saliencymix_prob": "data.saliencymix_prob",
              "saliencymix_per_example": "data.saliencymix_per_example"}
# Config values renamed after runs may have started (dotted key -> {old value: new value}): pytorch-kd's recipe
# values were once spelled "seed". A config.json that holds an old value compares, resumes and reports as if it held
# the new one; a config or command line that sets it is refused with one line naming the new value.
RENAMED_VALUES = {"data.normalization": {"seed": "pytorch_kd"}, "optimizer.lr_decay_timing": {"seed": "pytorch_kd"}}
# Flags that moved to another key: a config.json that holds the old one compares as if the new one were on where
# either is (logit standardization's one home, for every logit method, is loss.logit_standardization).
MOVED_FLAGS = {"dkd.logit_standardization": "loss.logit_standardization"}


def create_workdir(workdir: Path) -> None:
    """Creates `workdir` (and its parents) if needed; one line if it cannot be created. A cloud workdir needs
    nothing: a prefix exists once something is written under it."""
    if is_url(workdir):
        return
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--workdir {workdir}: cannot create it ({error.strerror})") from None


class WorkdirLock:
    """One live run per workdir: an exclusive `flock` on the workdir directory itself, held by process 0 while
    the run lives, so that deleting a file cannot steal it from a live run.

    The operating system releases it when the holder exits, however it ends, so the lock of a dead run is simply
    taken over; `WORKDIR/.lock` names the holder (host, pid, start time) for the message a second run gets.
    `acquire` may be called again once held (no-op), and only once the workdir exists. Inactive (the other
    processes of a multi-process run, and a cloud workdir: object storage has no locks, docs/scale_out.md):
    does nothing."""

    FILE = ".lock"

    def __init__(self, workdir: Path, active: bool = True):
        self.path = as_path(workdir) / self.FILE
        self.active = active and not is_url(workdir)
        self._file = None

    def acquire(self) -> None:
        if self._file is not None or not self.active:
            return
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(directory, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(directory)
            try:
                holder = self.path.read_text().strip() or "another process"
            except OSError:  # .lock deleted: the directory's lock still holds
                holder = "another process"
            raise UserError(f"--workdir {self.path.parent}: a run is live in it ({holder}); wait for it to end, "
                            f"or stop it (it resumes later), or use another --workdir") from None
        except OSError as error:  # a filesystem without locks: run unguarded rather than not at all
            os.close(directory)
            distributed.print_once(f"warning: cannot lock {self.path.parent} ({error.strerror}): nothing stops a "
                                   f"second run in this workdir")
            return
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        self.path.write_text(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        self._file = directory

    def release(self) -> None:
        if self._file is not None:
            os.close(self._file)  # closing drops the flock; .lock stays, naming the last holder
            self._file = None


def _holder(config: dict, key: str):
    """(the dict holding dotted `key` in `config`, or None; the key's last part)."""
    *sections, name = key.split(".")
    holder = config
    for section in sections:
        holder = holder.get(section) if isinstance(holder, dict) else None
    return (holder if isinstance(holder, dict) else None), name


def without_keys(config: dict, keys) -> dict:
    """A copy of `config` (a config.json dict) without `keys` (dotted: a key of a section)."""
    config = copy.deepcopy(config)
    for key in keys:
        holder, name = _holder(config, key)
        if holder is not None:
            holder.pop(name, None)
    return config


def _run_defining(config_json: str) -> dict:
    """A `config.json` text as a dict in today's layout (`with_added_keys`), without the RESUME_MAY_CHANGE keys."""
    config = json.loads(config_json)
    if not isinstance(config, dict):
        raise ValueError("not a JSON object")
    return without_keys(with_moved_flags(with_added_keys(config)), RESUME_MAY_CHANGE)


def with_moved_flags(config: dict) -> dict:
    """`config` (a config.json dict, changed in place) with each of the MOVED_FLAGS it holds moved to its new key."""
    for old_key, new_key in MOVED_FLAGS.items():
        holder, name = _holder(config, old_key)
        if holder is None or name not in holder:
            continue
        moved = holder.pop(name)
        new_holder, new_name = _holder(config, new_key)
        if new_holder is not None:
            new_holder[new_name] = bool(new_holder.get(new_name, False) or moved)
    return config


def with_added_keys(config: dict) -> dict:
    """`config` (a config.json dict, changed in place) in today's layout: its MOVED_KEYS at their new place, the
    ADDED_KEYS it lacks at their old behaviour's value, and its RENAMED_VALUES in today's spelling."""
    for old, new in MOVED_KEYS.items():
        old_holder, old_name = _holder(config, old)
        new_holder, new_name = _holder(config, new)
        if old_holder is not None and old_name in old_holder and new_holder is not None:
            new_holder.setdefault(new_name, old_holder.pop(old_name))
    for key, value in ADDED_KEYS.items():
        holder, name = _holder(config, key)
        if holder is not None:
            holder.setdefault(name, value)
    for key, renamed in RENAMED_VALUES.items():
        holder, name = _holder(config, key)
        if holder is not None and isinstance(holder.get(name), str):
            holder[name] = renamed.get(holder[name], holder[name])
    return config


def checkpoint_steps(workdir: Path, subdirectory: str = "checkpoints") -> list[int]:
    """The steps of the checkpoints in `WORKDIR/subdirectory`, from its listing alone (Orbax names each folder by
    its step; an interrupted save's `N.orbax-checkpoint-tmp-*` is not one), sorted; [] if there is none."""
    directory = as_path(workdir) / subdirectory
    try:
        return sorted(int(entry.name) for entry in directory.iterdir() if entry.name.isdigit())
    except OSError:  # no such folder
        return []


def never_started(workdir: Path) -> bool:
    """Whether the run in `workdir` stopped before any work worth keeping: no checkpoint (nor an attempt at one,
    train or init stage) was ever written and metrics.jsonl holds no row but the teacher's (a run that ended on
    a user error or a Ctrl-C before its first log step)."""
    workdir = as_path(workdir)
    for subdirectory in ("checkpoints", "init_checkpoints"):
        try:
            if any(entry.name[:1].isdigit() for entry in (workdir / subdirectory).iterdir()):
                return False
        except OSError:
            pass
    try:
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return True
    for line in lines:
        try:
            kind = json.loads(line).get("kind")
        except (ValueError, AttributeError):
            continue  # the end of a killed write
        if kind != "teacher":
            return False
    return True


def check_epochs(config, workdir: Path, steps_per_epoch: int) -> None:
    """Refuses `config.epochs` below what the run in `workdir` has already trained (its newest checkpoint): such a
    run would rewrite config.json to describe a shorter run than its checkpoints and exported model hold.
    Raising epochs extends a run; lowering them on a run that has not got that far yet is allowed."""
    path = as_path(workdir) / "config.json"
    try:
        previous = json.loads(path.read_text()).get("epochs")
    except (OSError, ValueError, AttributeError):
        return  # no run yet, or a config.json save_config refuses with its own line
    steps = checkpoint_steps(workdir)
    if not isinstance(previous, int) or config.epochs >= previous or not steps:
        return
    if steps[-1] > config.epochs * steps_per_epoch:
        reached = -(-steps[-1] // steps_per_epoch)  # epochs begun, rounded up
        raise UserError(f"{workdir} holds a run of {previous} epochs trained to step {steps[-1]} (epoch {reached}); "
                        f"--config.epochs={config.epochs} would end it before that: keep --config.epochs >= "
                        f"{reached}, or use a new --workdir")


def _checkpoint_folders(workdir: Path) -> list[str]:
    """The checkpoint folders in `WORKDIR/checkpoints` and `WORKDIR/init_checkpoints`, committed or being written
    (`N`, `N.orbax-checkpoint-tmp...`), as `checkpoints/N`."""
    folders = []
    for subdirectory in ("checkpoints", "init_checkpoints"):
        try:
            folders += [f"{subdirectory}/{entry.name}" for entry in (as_path(workdir) / subdirectory).iterdir()
                        if entry.name[:1].isdigit()]
        except OSError:  # no such folder
            pass
    return sorted(folders)


def check_workdir_files(workdir: Path) -> None:
    """Refuses, with one line, a workdir that lost what resuming its run needs, rather than restart or
    re-configure the run silently: checkpoints without the `config.json` that says which run they belong to, or
    a `config.json` whose run had committed a checkpoint (`WORKDIR/.checkpointed`, written with the first one:
    `jaxkd.io.run_checkpoint`) with no checkpoint left, committed or being written. A run that stopped before its
    first checkpoint has no `.checkpointed` and starts anew, as it always did."""
    workdir = as_path(workdir)
    folders = _checkpoint_folders(workdir)
    if not (workdir / "config.json").exists():
        committed = [folder for folder in folders if folder.split("/")[1].isdigit()]
        if committed:
            listed = ", ".join(committed[:3]) + (", ..." if len(committed) > 3 else "")
            raise UserError(f"{workdir} holds checkpoints ({listed}) "
                            f"but no config.json, which names their run's config: restore config.json from a copy, "
                            f"or use a new --workdir (or delete {workdir} to start anew)")
    elif not folders and (workdir / MARKER).exists():
        raise UserError(f"{workdir}: its run's checkpoints are gone (it had saved some: {MARKER}; nothing is left in "
                        f"checkpoints/ or init_checkpoints/): restore them from a copy, or delete {workdir} (or use "
                        f"a new --workdir) to start the run anew")


def check_config_json(config, workdir: Path) -> list[str]:
    """Reads `WORKDIR/config.json`, if any, against `config` without writing anything: an unreadable one, or one
    of another run that has started, is refused with one line; returns the keys in which it differs from a run
    that never started ([] when it is the same run or there is none). `jaxkd.train` calls it before loading
    anything, so that these refusals cost no data or model loading."""
    path = as_path(workdir) / "config.json"
    if not path.exists():
        return []
    try:
        previous = _run_defining(path.read_text())
    except (OSError, ValueError):  # unreadable, not JSON (JSONDecodeError, UnicodeDecodeError), not an object
        raise UserError(f"{path}: not a run config jaxkd can read (a JSON object); it identifies the run in "
                        f"{workdir}: restore it or use a new --workdir") from None
    current = _run_defining(config.to_json_best_effort(indent=2, sort_keys=True))
    changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
    if changed and not never_started(workdir):
        raise UserError(f"{workdir} holds a run with another config (differs in: {', '.join(changed)}); "
                        f"use a new --workdir to start a different run")
    return changed


def save_config(config, workdir: Path) -> None:
    """Writes `config.json` (process 0); a workdir that already holds a different run is refused (resume must
    be exact, up to RESUME_MAY_CHANGE), unless that run never started (`never_started`): a command that failed
    on a user error before its first checkpoint leaves its workdir reusable by the corrected command."""
    check_workdir_files(workdir)
    path = workdir / "config.json"
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    changed = check_config_json(config, workdir)
    if changed:
        distributed.print_once(f"{workdir}: its run stopped before its first checkpoint and log step; starting "
                               f"it anew with this config (differs in: {', '.join(changed)})", flush=True)
    distributed.barrier("config.json checked")  # every process has read it before process 0 replaces it
    if distributed.is_primary():
        write_text_atomically(text, path, force=True, what="the run's config")


def export_models(setup, state: TrainState, workdir: Path, result: dict, progress: dict) -> None:
    """The final student as `model/` (model checkpoint) and `student.pth` (seed layout, loads strictly), and
    each extra model of the method (DML's peers) as `{name}/` and `{name}.pth`. Every process takes part in
    the Orbax writes; process 0 writes the `.pth` files. `setup` is the run's `jaxkd.engine.setup.Setup`."""
    config = setup.config
    common = {"num_classes": setup.train.num_classes, "method": config.method,
              "saliencymix": bool(config.data.saliencymix), "step": int(state.step), "written_by": "jaxkd.train",
              "normalization": setup.pipeline.normalization}  # the mean/std its inputs were normalized with
    models = {"student": (canonical_name(config.model), state.student_variables(),
                          {"test_top1": result["top1"], "best_top1": progress["best_top1"]})}
    for name, (arch, variables) in setup.method.exports(state.method_variables()).items():
        if name in RESERVED_EXPORT_NAMES:
            raise ValueError(f"method {config.method} exports a model named {name!r}, a reserved workdir name")
        models[name] = (canonical_name(arch), variables, {})
    try:  # torch is optional: without it the run writes model checkpoints only
        from jaxkd.pytorch.converter import flax_to_torch, native_layout
        from jaxkd.pytorch.torch_files import torch_file_contents, write_torch_file
    except ImportError:
        flax_to_torch = None
    written = []
    for name, (arch, variables, extra) in models.items():
        variables = jax.device_get(variables)
        directory = workdir / (TRAINED_MODEL_DIR if name == "student" else name)
        save_model_checkpoint(directory, variables, {"arch": arch, **common, **extra}, force=True)
        written.append(directory)
        if flax_to_torch is not None and distributed.is_primary():
            state_dict = flax_to_torch(variables, arch, num_batches_tracked=int(state.step))
            write_torch_file(torch_file_contents(state_dict, native_layout(arch), epoch=config.epochs,
                                                 accuracy=extra.get("test_top1")), workdir / f"{name}.pth", force=True)
            written.append(workdir / f"{name}.pth")
    missing_torch = "" if flax_to_torch else " (PyTorch is not installed: no .pth files)"
    distributed.print_once(f"final test top-1 {result['top1']:.2f} (best {progress['best_top1']:.2f}); wrote "
                           f"{', '.join(str(path) for path in written)}{missing_torch}", flush=True)
