"""A model on disk: an Orbax checkpoint directory holding its Flax variables and a JSON metadata item.

Written by `python -m convert import` (and by training's final export), read by evaluation, distillation
(teachers) and `python -m convert export`. The metadata names the architecture and number of classes, so the
model can be rebuilt without the user repeating them, and records where the weights came from.

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
from jaxkd.models import canonical_name

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


def load_model_checkpoint(directory) -> tuple[dict, dict]:
    """(variables as numpy arrays, metadata) from a directory written by `save_model_checkpoint`."""
    directory = absolute(directory)
    if not input_exists(directory, str(directory)):
        raise UserError(f"{directory}: no such checkpoint directory")
    if not is_model_checkpoint(directory) and (directory / "config.json").is_file():
        raise UserError(f"{directory}: a training workdir without its final {TRAINED_MODEL_DIR}/ (written when the "
                        f"run ends; running its command again resumes it)")
    if not is_model_checkpoint(directory):
        raise UserError(f"{directory}: not a jaxkd model checkpoint (expected the '{VARIABLES_ITEM}' and "
                        f"'{METADATA_ITEM}' items written by `python -m convert import` or by training)")
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


def resolve_model_dir(path):
    """The model checkpoint a directory stands for: itself, or a training workdir's final `model/`."""
    path = as_path(path)
    if not is_model_checkpoint(path) and is_model_checkpoint(path / TRAINED_MODEL_DIR):
        return path / TRAINED_MODEL_DIR
    return path


def load_model(path, arch: str | None = None) -> tuple[dict, str, int]:
    """(variables, architecture, num_classes) from a model checkpoint directory, a training workdir (its final
    `model/`) or a `.pth` file: `load_model_and_metadata` without the metadata."""
    return load_model_and_metadata(path, arch)[:3]


def load_model_and_metadata(path, arch: str | None = None) -> tuple[dict, str, int, dict | None]:
    """(variables, architecture, num_classes, metadata) from a model checkpoint directory, a training workdir
    (its final `model/`) or a `.pth` file (metadata None).

    A `.pth` (seed or RepDistiller layout) is converted in memory, its architecture inferred from the shapes
    unless `arch` is given; for a checkpoint directory the architecture comes from its metadata, and an `arch`
    that disagrees is an error.
    """

    path = as_path(path)
    if input_exists(path, str(path)) and path.is_dir():
        path = resolve_model_dir(path)
        variables, metadata = load_model_checkpoint(path)
        stored = metadata["arch"]
        if arch is not None and canonical_name(arch) != canonical_name(stored):
            raise UserError(f"{path}: holds a {stored}, not a {canonical_name(arch)}")
        return variables, stored, int(metadata["num_classes"]), metadata
    if not path.exists():
        raise UserError(f"{path}: no such file or checkpoint directory")

    from jaxkd.pytorch.converter import import_torch  # torch is optional: needed only for a .pth
    imported = import_torch(path, arch=arch)
    return imported.variables, imported.arch, imported.num_classes, None


def input_normalization(metadata: dict | None) -> str:
    """The mean/std (jaxkd.data.augment.NORMALIZATIONS) a model's inputs were normalized with in training: its
    metadata says it (jaxkd.train writes it); otherwise the seed's, as for the seed's released `.pth` files."""
    return (metadata or {}).get("normalization", "seed")
