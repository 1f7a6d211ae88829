"""Accuracy of a model on a split and on CIFAR-100-C: one jitted counting step per (model, mesh), reused for
every batch of every dataset (compiled once); the uint8 batch crosses to the device and is normalized inside the
step; the last partial batch is padded and masked so that every image counts once; counts stay on the device
until each dataset ends. Training's evaluation and `python -m jaxkd.evaluate` (jaxkd/tools/evaluate.py) use it."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxkd.data.augment import normalize
from jaxkd.data.cifar100c import SEVERITIES, Cifar100C
from jaxkd.engine.compile_options import compiler_options
from jaxkd.engine.mesh import batch_sharded, data_mesh, process_rows, replicated
from jaxkd.errors import UserError

DEFAULT_BATCH_SIZE = 500
TOP_K = 5
CIFAR100C_CLASSES = 100
# Order of the entries of the on-device counts vector.
CORRECT_TOP1, CORRECT_TOPK, COUNTED = range(3)

Progress = Callable[[int], None]  # called with the number of real images in each dispatched batch


# ------------------------------------------------------------------------------------------- the jitted step


def eval_step_for(model, mesh: jax.sharding.Mesh | None = None, normalization: str = "pytorch_kd"):
    """The evaluation step of `model` on `mesh` (default `data_mesh()`), jitted once and cached: the step of
    `classifiers_step_for` with the model as its one classifier.

    step(variables, images uint8 (B, 32, 32, 3), labels int32 (B,), mask bool (B,), counts int32 (1, 3))
      -> counts + (top-1 correct, top-5 correct, images counted), masked examples excluded.
    """
    return classifiers_step_for(_model_logits(model), ("model",), mesh, normalization, models=(model,))


def classifiers_step_for(logits_fn, names: tuple, mesh: jax.sharding.Mesh | None = None,
                         normalization: str = "pytorch_kd", models: tuple = ()):
    """The one evaluation step: `logits_fn(variables, normalized images) -> {name: logits}` scored for each of
    `names`, jitted once per (logits_fn, names, mesh, compiler options, normalization) and cached. The images
    are normalized with the constants of `normalization` (jaxkd.data.augment.NORMALIZATIONS: the recipe's).

    step(variables, images uint8 (B, 32, 32, 3), labels int32 (B,), mask bool (B,), counts int32 (len(names), 3))
      -> counts + one (top-1 correct, top-5 correct, images counted) row per name.
    Variables and counts are replicated, the batch is split over the `data` axis; the shardings are fixed so
    that the counts it returns feed the next call without a recompile. Compiled with jaxkd's compiler options
    for the mesh's platform and `models`, the Flax modules `logits_fn` runs (`jaxkd.engine.compile_options`: YNN
    fusions on CPU unless JAXKD_CPU_YNN=0).
    """
    mesh = data_mesh() if mesh is None else mesh
    return _jitted_classifiers_step(logits_fn, names, mesh, _options_key(mesh, models), normalization)


@functools.cache
def _model_logits(model):
    """`model`'s logits as a one-classifier logits_fn: the same function object for the same model, so that
    its compiled step is found in the cache."""

    def model_logits(variables, images):
        _, logits = model.apply(variables, images, train=False)
        return {"model": logits}

    return model_logits


def _options_key(mesh, models: tuple = ()) -> tuple:
    """The compiler options for `mesh` and `models` as a hashable cache key (a changed JAXKD_CPU_YNN gets a new
    step)."""
    return tuple(sorted((compiler_options(mesh, models=models) or {}).items()))


def _batch_counts(logits, labels, mask) -> jax.Array:
    """(top-1 correct, top-k correct, images counted) of one batch, masked examples excluded."""
    top1 = jnp.argmax(logits, axis=-1) == labels
    _, top_classes = jax.lax.top_k(logits, min(TOP_K, logits.shape[-1]))
    topk = jnp.any(top_classes == labels[:, None], axis=-1)
    return jnp.stack([jnp.sum(top1 & mask), jnp.sum(topk & mask), jnp.sum(mask)])


@functools.cache
def _jitted_classifiers_step(logits_fn, names: tuple, mesh: jax.sharding.Mesh, options: tuple,
                             normalization: str):
    whole, sharded = replicated(mesh), batch_sharded(mesh)

    def eval_step(variables, images, labels, mask, counts):
        logits = logits_fn(variables, normalize(images, normalization))
        rows = [_batch_counts(logits[name], labels, mask) for name in names]
        return counts + jnp.stack(rows).astype(counts.dtype)

    return jax.jit(eval_step, in_shardings=(whole, sharded, sharded, sharded, whole), out_shardings=whole,
                   compiler_options=dict(options) or None)


# ---------------------------------------------------------------------------------------- library functions


def place_variables(variables, mesh: jax.sharding.Mesh | None = None):
    """The variables replicated on the mesh's devices; do this once and pass the result to every evaluation
    (already placed variables are returned without a copy)."""
    return jax.device_put(variables, replicated(data_mesh() if mesh is None else mesh))


def _num_classes(model) -> int:
    return int(model.num_classes)


def check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
    """A one-line error when `labels` (of `what`) fall outside the model's classes."""
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{what} has labels {int(labels.min())}..{int(labels.max())}, but the model has "
                        f"{num_classes} classes")


def _round_batch_size(batch_size: int, mesh) -> int:
    """`batch_size` rounded up to a multiple of the number of devices (the extra rows are padding)."""
    if batch_size < 1:
        raise UserError(f"batch size must be positive, got {batch_size}")
    devices = mesh.devices.size
    return -(-batch_size // devices) * devices


def _accumulate(step, variables, images, labels, batch_size: int, mesh, progress: Progress | None,
                rows: int = 1) -> jax.Array:
    """Dispatches the step over all of `images` (padded, masked last batch) and returns the device counts
    (rows, 3), one row per classifier the step scores, without waiting for them. `images` may be a
    memory map: each batch is read when it is sent, and in a multi-process run each process reads only the
    rows its devices hold."""
    sharded = batch_sharded(mesh)
    counts = jax.device_put(np.zeros((rows, 3), np.int32), replicated(mesh))
    labels = np.asarray(labels, dtype=np.int32)
    mine = process_rows(sharded, batch_size)  # all rows, but in a multi-process run
    local_size = mine.stop - mine.start
    for start in range(0, len(labels), batch_size):
        real = min(batch_size, len(labels) - start)
        first, last = min(start + mine.start, len(labels)), min(start + mine.stop, len(labels))
        batch_images = np.asarray(images[first:last], dtype=np.uint8)
        batch_labels = labels[first:last]
        mask = np.arange(mine.start, mine.stop) < real
        if last - first < local_size:
            missing = local_size - (last - first)
            batch_images = np.concatenate([batch_images, np.zeros((missing,) + tuple(images.shape[1:]), np.uint8)])
            batch_labels = np.concatenate([batch_labels, np.zeros(missing, np.int32)])
        batch = [jax.make_array_from_process_local_data(sharded, local, (batch_size,) + local.shape[1:])
                 for local in (batch_images, batch_labels, mask)]
        counts = step(variables, *batch, counts)
        if progress is not None:
            progress(real)
    return counts


def _summary(counts) -> dict:
    """Accuracies in percent from fetched counts."""
    counts = np.asarray(counts)
    total = int(counts[COUNTED])
    correct1, correct5 = int(counts[CORRECT_TOP1]), int(counts[CORRECT_TOPK])
    return {
        "top1": 100.0 * correct1 / total if total else float("nan"),
        "top5": 100.0 * correct5 / total if total else float("nan"),
        "correct1": correct1,
        "correct5": correct5,
        "count": total,
    }


def evaluate_split(model, variables, images: np.ndarray, labels: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE,
                   *, mesh: jax.sharding.Mesh | None = None, progress: Progress | None = None,
                   normalization: str = "pytorch_kd") -> dict:
    """Top-1 and top-5 accuracy (percent) of `model` on uint8 NHWC `images` with int `labels`, every image
    counted once. Returns dict(top1, top5, correct1, correct5, count). top-5 is top-k with k = min(5, classes).

    `variables` may be host arrays or, cheaper when evaluating several sets, the result of `place_variables`.
    """
    mesh = data_mesh() if mesh is None else mesh
    labels = np.asarray(labels)
    if len(images) != len(labels):
        raise UserError(f"{len(images)} images but {len(labels)} labels")
    check_labels(labels, _num_classes(model), "the dataset")
    batch_size = _round_batch_size(batch_size, mesh)
    counts = _accumulate(eval_step_for(model, mesh, normalization), place_variables(variables, mesh), images, labels,
                         batch_size, mesh, progress)
    return _summary(jax.device_get(counts)[0])


def evaluate_classifiers(logits_fn, variables, images: np.ndarray, labels: np.ndarray,
                         batch_size: int = DEFAULT_BATCH_SIZE, *, mesh: jax.sharding.Mesh | None = None,
                         normalization: str = "pytorch_kd", models: tuple = ()) -> dict:
    """Accuracy of several classifiers computed by one forward pass, e.g. a student and a method's extra heads:
    `logits_fn(variables, normalized_images) -> {name: logits}` (pure; the same function object across calls
    reuses the compiled step); `models`: the Flax modules it runs (`classifiers_step_for`). Returns
    {name: evaluate_split-style summary}; every image counted once."""
    mesh = data_mesh() if mesh is None else mesh
    labels = np.asarray(labels)
    batch_size = _round_batch_size(batch_size, mesh)
    variables = place_variables(variables, mesh)
    shapes = jax.eval_shape(logits_fn, variables, jax.ShapeDtypeStruct((batch_size,) + images.shape[1:],
                                                                        jnp.float32))
    names = tuple(shapes)
    for name in names:
        check_labels(labels, shapes[name].shape[-1], "the dataset")
    step = classifiers_step_for(logits_fn, names, mesh, normalization, models)
    counts = jax.device_get(_accumulate(step, variables, images, labels, batch_size, mesh, None, len(names)))
    return {name: _summary(row) for name, row in zip(names, counts)}


def evaluate_batches(logits_fn, variables, batches, batch_size: int, *, mesh: jax.sharding.Mesh | None = None,
                     normalization: str = "pytorch_kd", models: tuple = ()) -> dict:
    """`evaluate_classifiers` over this process's `batches` of a streamed split (dicts of uint8 `image`, `label`,
    `mask` holding `batch_size / process count` rows each, the padding masked: `jaxkd.data.streaming`'s
    evaluation batches), every real image counted once. `batch_size`: the global batch, a multiple of the devices;
    `models`: the Flax modules `logits_fn` runs."""
    mesh = data_mesh() if mesh is None else mesh
    sharded, variables = batch_sharded(mesh), place_variables(variables, mesh)
    step, counts, names = None, None, None
    for batch in batches:
        arrays = [jax.make_array_from_process_local_data(sharded, batch[key], (batch_size,) + batch[key].shape[1:])
                  for key in ("image", "label", "mask")]
        if step is None:  # the classifiers' names (and classes) from the first batch's shapes
            shapes = jax.eval_shape(logits_fn, variables,
                                    jax.ShapeDtypeStruct(arrays[0].shape, jnp.float32))
            names = tuple(shapes)
            step = classifiers_step_for(logits_fn, names, mesh, normalization, models)
            counts = jax.device_put(np.zeros((len(names), 3), np.int32), replicated(mesh))
        counts = step(variables, *arrays, counts)
    if step is None:
        raise UserError("the validation split holds no image")
    return {name: _summary(row) for name, row in zip(names, jax.device_get(counts))}


def evaluate_model_batches(model, variables, batches, batch_size: int, **kwargs) -> dict:
    """`evaluate_split`'s summary of one model over streamed `batches` (`evaluate_batches`)."""
    return evaluate_batches(_model_logits(model), variables, batches, batch_size, models=(model,), **kwargs)["model"]


def readable_corruptions(c100c: Cifar100C) -> tuple[tuple[str, ...], dict[str, str]]:
    """(corruptions whose files open with the right shape and dtype, {corruption: why not} for the others)."""
    readable, unreadable = [], {}
    for corruption in c100c.available:
        try:
            c100c.images(corruption)
            readable.append(corruption)
        except UserError as error:
            unreadable[corruption] = str(error)
    return tuple(readable), unreadable


def evaluate_cifar100c(model, variables, c100c: Cifar100C, batch_size: int = DEFAULT_BATCH_SIZE, *,
                       mesh: jax.sharding.Mesh | None = None, progress: Progress | None = None,
                       normalization: str = "pytorch_kd") -> dict:
    """Accuracy on every available CIFAR-100-C corruption x severity, per-corruption means and the overall mean.

    Returns dict(top1, top5: means over every evaluated corruption x severity (percent),
    corruptions: {name: dict(top1, top5: means over its severities, severities: {"1".."5": evaluate_split-like
    dict})}, evaluated, missing: names without a file, unreadable: {name: reason}, directory).
    Missing and unreadable corruptions are left out of the means; the others are all evaluated.
    """
    mesh = data_mesh() if mesh is None else mesh
    num_classes = _num_classes(model)
    if num_classes != CIFAR100C_CLASSES:
        raise UserError(f"CIFAR-100-C has {CIFAR100C_CLASSES} classes, but the model has {num_classes}")
    check_labels(c100c.labels, num_classes, f"CIFAR-100-C {c100c.directory}")
    batch_size = _round_batch_size(batch_size, mesh)
    step, variables = eval_step_for(model, mesh, normalization), place_variables(variables, mesh)
    evaluated, unreadable = readable_corruptions(c100c)
    corruptions = {}
    for corruption in evaluated:
        device_counts = [_accumulate(step, variables, part.images, part.labels, batch_size, mesh, progress)
                         for part in (c100c.severity(corruption, severity) for severity in SEVERITIES)]
        severities = {str(s): _summary(c[0]) for s, c in zip(SEVERITIES, jax.device_get(device_counts))}
        corruptions[corruption] = {
            "top1": float(np.mean([r["top1"] for r in severities.values()])),
            "top5": float(np.mean([r["top5"] for r in severities.values()])),
            "severities": severities,
        }
    every = [r for c in corruptions.values() for r in c["severities"].values()]
    return {
        "top1": float(np.mean([r["top1"] for r in every])) if every else None,
        "top5": float(np.mean([r["top5"] for r in every])) if every else None,
        "corruptions": corruptions,
        "evaluated": list(evaluated),
        "missing": list(c100c.missing),
        "unreadable": unreadable,
        "directory": str(c100c.directory),
    }
