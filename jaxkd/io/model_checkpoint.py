"""A model on disk: an Orbax checkpoint directory holding its Flax variables and a JSON metadata item.

Written by `python -m convert import` (and by training's final export), read through
`jaxkd.io.model_reference.open_model` by evaluation, distillation (teachers) and `python -m convert export`. The
metadata names the architecture and number of classes, so the model can be rebuilt without the user repeating
them, and records where the weights came from.

Writes never leave a half-written or lost directory: Orbax writes into a fresh temporary directory beside the
target, which is renamed into place only once complete; an existing target is kept unless `force` is given,
and even then it is replaced only after the new one is complete. A failed write is one `OutputError`. In a multi-process run every process takes
part in the write (Orbax's protocol) and process 0 moves directories. In cloud storage (`gs://`) the same
steps run, but moving a directory there copies its objects one by one: a process killed during that move (a
few seconds for CIFAR models) can leave the target incomplete; the complete copy stays in the staging
directory `.{name}.*.tmp` beside it.
"""

import secrets

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxkd.engine import distributed
from jaxkd.errors import UserError, output_error, write_errors
from jaxkd.io.orbax_logs import quiet_orbax_failures
from jaxkd.io.paths import absolute, as_path, input_exists, remove_tree

quiet_orbax_failures()  # a failed save is reported as one line, not as Orbax's logged tracebacks

VARIABLES_ITEM = "variables"
METADATA_ITEM = "metadata"
REQUIRED_METADATA = ("arch", "num_classes")
TRAINED_MODEL_DIR = "model"  # where training writes the final student inside its workdir


def is_model_checkpoint(path) -> bool:
    path = as_path(path)
    return (path / VARIABLES_ITEM).is_dir() and (path / METADATA_ITEM).exists()


def save_model_checkpoint(directory, variables: dict, metadata: dict, force: bool = False):
    """Writes `variables` and `metadata` (JSON-serializable, with `arch` and `num_classes`) to `directory`."""
    directory = absolute(directory)
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"model metadata lacks {missing}")
    if directory.exists() and not force:
        raise UserError(f"{directory}: already exists (pass --force to replace it)")
    primary = distributed.is_primary()
    staging = directory.parent / f".{directory.name}.{distributed.agree(secrets.randbits(62)):016x}.tmp"
    try:
        if primary:
            staging.mkdir(parents=True)
        distributed.barrier(f"model checkpoint {staging.name} staged")
        arrays = jax.tree.map(np.asarray, variables)
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            checkpointer.save(staging / "checkpoint", ocp.args.Composite(**{
                VARIABLES_ITEM: ocp.args.StandardSave(arrays),
                METADATA_ITEM: ocp.args.JsonSave(dict(metadata)),
            }))
        if primary:
            if directory.exists():
                directory.rename(staging / "previous")
            (staging / "checkpoint").rename(directory)
    except write_errors() as error:  # a full disk, an I/O error, a refused upload
        raise output_error(directory, "the model checkpoint", error) from None
    finally:
        if primary:
            remove_tree(staging)
    distributed.barrier(f"model checkpoint {staging.name} written")
    return directory


def not_a_checkpoint(directory) -> UserError:
    """The one line for an existing directory that is no model checkpoint: a training workdir not yet finished, or
    anything else."""
    directory = absolute(directory)
    if (directory / "config.json").is_file():
        return UserError(f"{directory}: a training workdir without its final {TRAINED_MODEL_DIR}/ (written when the "
                         f"run ends; running its command again resumes it)")
    return UserError(f"{directory}: not a jaxkd model checkpoint (expected the '{VARIABLES_ITEM}' and "
                     f"'{METADATA_ITEM}' items written by `python -m convert import` or by training)")


def load_model_checkpoint(directory) -> tuple[dict, dict]:
    """(variables as numpy arrays, metadata) from a directory written by `save_model_checkpoint` (any model
    reference: jaxkd.io.model_reference.open_model)."""
    directory = absolute(directory)
    if not input_exists(directory, str(directory)):
        raise UserError(f"{directory}: no such checkpoint directory")
    if not is_model_checkpoint(directory):
        raise not_a_checkpoint(directory)
    return read_model_checkpoint(directory)


def read_model_checkpoint(directory) -> tuple[dict, dict]:
    """`load_model_checkpoint` of a directory known to be a model checkpoint."""
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        restored = checkpointer.restore(directory, ocp.args.Composite(**{
            VARIABLES_ITEM: ocp.args.StandardRestore(),
            METADATA_ITEM: ocp.args.JsonRestore(),
        }))
    metadata = dict(restored[METADATA_ITEM])
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise UserError(f"{directory}: its metadata lacks {', '.join(missing)}")
    return jax.tree.map(np.asarray, restored[VARIABLES_ITEM]), metadata
