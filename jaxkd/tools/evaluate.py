"""Evaluation: clean test accuracy and CIFAR-100-C robustness of a model checkpoint.

    python -m jaxkd.evaluate --checkpoint CKPT [--arch NAME] [--cifar100c DIR] [--out results.json]
                             [--source tfds|cifar100-python|digits] [--data-dir DIR] [--batch-size 500] [--force]
    python -m jaxkd.evaluate --checkpoint CKPT --source imagefolder|tfds_images [--data-dir DIR] [--tfds-name NAME]
                             [--split NAME] [--eval-resize 256] [--eval-crop 224] [--workers N]

CKPT is a jaxkd model checkpoint directory (`python -m convert import`, training), a training workdir (its final
`model/`) or a `.pth` (seed or RepDistiller layout, converted in memory), local or `gs://`. Prints a markdown table (clean top-1/top-5, the CIFAR-100-C mean,
then every corruption x severity) and writes the same numbers as JSON to --out. User mistakes print one line
starting with "error:" and exit with status 2; nothing is written then.

The counting itself is jaxkd/engine/evaluation.py (`evaluate_split`, `evaluate_cifar100c`, and for the streamed
sources `evaluate_model_batches` over `jaxkd.data.streaming`'s padded, masked batches), which training uses too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
from tqdm import tqdm

from jaxkd import __version__
from jaxkd.data.augment import NORMALIZATIONS
from jaxkd.data.cifar100c import SEVERITIES, Cifar100C, open_cifar100c
from jaxkd.data.sources import DIGITS_SIZES, SOURCES, STREAMING_SOURCES, load_split
from jaxkd.data.streaming import ImageFolderSource, ImageTransforms, TfdsImageSource, make_eval_batches
from jaxkd.data.streaming.run_data import EVAL_SPLIT, TFDS_EVAL_SPLIT, TRAIN_SPLIT
from jaxkd.data.streaming.workers import HOST_CORES, describe, eval_worker_processes, worker_processes
from jaxkd.engine import distributed
from jaxkd.engine.evaluation import (CIFAR100C_CLASSES, DEFAULT_BATCH_SIZE, check_labels, evaluate_cifar100c,
                                     evaluate_model_batches, evaluate_split, place_variables, readable_corruptions)
from jaxkd.engine.mesh import data_mesh
from jaxkd.errors import UserError, run_command
from jaxkd.io.model_reference import TORCH_FILE, open_model
from jaxkd.io.paths import as_path
from jaxkd.io.safe_write import check_output, write_text_atomically
from jaxkd.io.workdir import RENAMED_VALUES

# ---------------------------------------------------------------------------------------------- reporting


def percent(value) -> str:
    """An accuracy for the markdown tables: two decimals, "-" when missing."""
    return "-" if value is None else f"{value:.2f}"


def format_report(results: dict) -> str:
    """The markdown tables printed by the command: clean and CIFAR-100-C mean, then corruption x severity."""
    clean = results["clean"]
    lines = [f"{results['checkpoint']}: {results['arch']}, {results['num_classes']} classes; inputs normalized with "
             f"the {results['normalization']} mean/std", "",
             "| test set | top-1 | top-5 | images |", "|---|---:|---:|---:|",
             f"| {results['dataset']} | {percent(clean['top1'])} | {percent(clean['top5'])} | {clean['count']} |"]
    c100c = results.get("cifar100c")
    if c100c is None:
        return "\n".join(lines)
    evaluated = c100c["evaluated"]
    images = sum(r["count"] for c in c100c["corruptions"].values() for r in c["severities"].values())
    lines.append(f"| CIFAR-100-C mean ({len(evaluated)} corruptions x {len(SEVERITIES)} severities) | "
                 f"{percent(c100c['top1'])} | {percent(c100c['top5'])} | {images} |")
    skipped = c100c["missing"] + list(c100c["unreadable"])
    if skipped:
        lines.append(f"\nCIFAR-100-C mean leaves out {len(skipped)} corruption(s) not evaluated: {', '.join(skipped)}")
    lines += ["", "| corruption (top-1) | " + " | ".join(f"s{s}" for s in SEVERITIES) + " | mean |",
              "|---|" + "---:|" * (len(SEVERITIES) + 1)]
    for name, result in c100c["corruptions"].items():
        cells = [percent(result["severities"][str(s)]["top1"]) for s in SEVERITIES]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {percent(result['top1'])} |")
    return "\n".join(lines)


def write_json(results: dict, out: Path, force: bool) -> None:
    """Writes `results` as JSON beside-then-into `out` (see `jaxkd.io.safe_write`); an existing `out` is replaced
    only with `force`."""
    write_text_atomically(json.dumps(results, indent=2) + "\n", out, force, "the results")


# ----------------------------------------------------------------------------- checks shared by the commands


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {batch_size}")


def open_checked_cifar100c(directory, models: dict[str, int]) -> tuple[Cifar100C, tuple[str, ...], dict[str, str]]:
    """(opened CIFAR-100-C, readable corruptions, {unreadable corruption: why}) for the models {name: classes} to
    be evaluated on it: one line if a model lacks CIFAR-100's classes, a label is out of range or no corruption
    file is readable; missing and unreadable corruptions are named in warnings and left out of the means."""

    c100c = open_cifar100c(directory)
    for name, num_classes in models.items():
        if num_classes != CIFAR100C_CLASSES:
            raise UserError(f"{name}: the model has {num_classes} classes; CIFAR-100-C has {CIFAR100C_CLASSES}")
    check_labels(c100c.labels, CIFAR100C_CLASSES, f"CIFAR-100-C {c100c.directory}")
    evaluated, unreadable = readable_corruptions(c100c)
    if not evaluated:
        raise UserError(f"CIFAR-100-C folder {c100c.directory} has no readable corruption file")
    if c100c.missing:
        distributed.print_once(f"warning: CIFAR-100-C: no file for {len(c100c.missing)} corruption(s) in "
                               f"{c100c.directory}: {', '.join(c100c.missing)}; the means are over the others",
                               file=sys.stderr)
    for name, reason in unreadable.items():
        distributed.print_once(f"warning: CIFAR-100-C: skipping {name}: {reason}", file=sys.stderr)
    return c100c, evaluated, unreadable


def load_checked_test_split(args, models: dict[str, int]):
    """The clean test split the command line names (`add_data_arguments`), checked against the models
    {name: classes}."""

    split = load_split(args.source, "test", args.data_dir, download=args.download, digits_size=args.digits_size)
    for name, num_classes in models.items():
        if split.num_classes != num_classes:
            raise UserError(f"{name}: the model has {num_classes} classes, but the {args.source} test split has "
                            f"{split.num_classes}")
    return split


def open_streamed_split(args, models: dict[str, int]):
    """(the source, its name) of the split `--source imagefolder|tfds_images` names, checked against the models
    {name: classes}: an image folder's labels are the indices of its `train` folder's classes, as training gave
    them (without a `train` folder: the split's own folders, as torchvision's `ImageFolder(root/val)`)."""
    if args.source == "tfds_images":
        if not args.tfds_name:
            raise UserError("--source tfds_images reads a TFDS image-classification dataset: name it with "
                            "--tfds-name (e.g. imagenet2012)")
        split = args.split or TFDS_EVAL_SPLIT
        source = TfdsImageSource(args.tfds_name, split, args.data_dir)
        name = f"{args.tfds_name} {split}"
    else:
        if not args.data_dir:
            raise UserError(f"--source imagefolder reads an image folder: set --data-dir to the folder that holds "
                            f"{EVAL_SPLIT}/<class>/<image> (and {TRAIN_SPLIT}/<class>/, whose classes number the "
                            f"labels)")
        split = args.split or EVAL_SPLIT
        classes_from = TRAIN_SPLIT if (as_path(args.data_dir) / TRAIN_SPLIT).is_dir() else split
        source = ImageFolderSource(args.data_dir, split, classes_from=classes_from)
        name = f"{args.data_dir} {split}"
        if source.missing_classes:
            distributed.print_once(f"warning: {name} has no folder for {len(source.missing_classes)} of the "
                                   f"{source.num_classes} classes of {TRAIN_SPLIT} (e.g. {source.missing_classes[0]}): "
                                   f"the accuracy is over the classes it has", file=sys.stderr)
    for model_name, num_classes in models.items():
        if source.num_classes != num_classes:
            raise UserError(f"{model_name}: the model has {num_classes} classes, but {name} has "
                            f"{source.num_classes}")
    return source, name


def evaluate_streamed(model, variables, source, args, mesh, normalization: str, progress) -> dict:
    """`evaluate_split`'s summary over a streamed split: Resize + CenterCrop (`--eval-resize`, `--eval-crop`) in
    `--workers` processes (-1: one per core; a small split in threads: jaxkd/data/streaming/workers.py), the global
    batch rounded up to the devices, the last padded and masked."""
    transforms = ImageTransforms(eval_resize=args.eval_resize, eval_crop=args.eval_crop)
    batch_size = -(-args.batch_size // mesh.devices.size) * mesh.devices.size
    workers = worker_processes(args.workers)
    distributed.print_once(describe("--workers", args.workers, workers, len(source), training=False), flush=True)
    batches = make_eval_batches(source, transforms, batch_size, jax.process_index(), jax.process_count(),
                                workers=eval_worker_processes(workers, len(source)))

    def counted(batches):
        for batch in batches:
            yield batch
            progress(int(batch["mask"].sum()) * jax.process_count())

    return evaluate_model_batches(model, variables, counted(batches), batch_size, mesh=mesh,
                                  normalization=normalization)


# ------------------------------------------------------------------------------------------- command line


def run(args) -> dict:
    """Loads, checks every input, evaluates and reports; returns the results written as JSON."""

    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    out = check_output(args.out, args.force) if args.out else None
    check_batch_size(args.batch_size)
    streamed = args.source in STREAMING_SOURCES
    check_streaming_arguments(args, streamed)
    opened = open_model(args.checkpoint, arch=args.arch)
    variables, arch, num_classes, model = opened.variables, opened.arch, opened.num_classes, opened.model
    # a .pth has no record of its inputs' mean/std: on ImageNet-style images torchvision's is its likely one
    normalization = args.normalization or ("imagenet" if streamed and opened.kind == TORCH_FILE
                                           else opened.normalization)
    models = {str(args.checkpoint): num_classes}
    c100c, evaluated = None, ()
    if args.cifar100c:
        c100c, evaluated, _ = open_checked_cifar100c(args.cifar100c, models)
    if streamed:
        source, dataset = open_streamed_split(args, models)
    else:
        split, dataset = load_checked_test_split(args, models), f"{args.source} test"

    mesh = data_mesh()
    placed = place_variables(variables, mesh)
    total = (len(source) if streamed else len(split)) + (len(c100c.labels) * len(evaluated) if c100c else 0)
    with tqdm(total=total, unit="img", desc="evaluating", leave=False, dynamic_ncols=True,
              disable=True if args.quiet or not distributed.is_primary() else None) as bar:
        if streamed:
            clean = evaluate_streamed(model, placed, source, args, mesh, normalization, bar.update)
        else:
            clean = evaluate_split(model, placed, split.images, split.labels, args.batch_size, mesh=mesh,
                                   progress=bar.update, normalization=normalization)
        robust = None
        if c100c is not None:
            robust = evaluate_cifar100c(model, placed, c100c, args.batch_size, mesh=mesh, progress=bar.update,
                                        normalization=normalization)

    results = {
        "checkpoint": str(args.checkpoint),
        "arch": arch,
        "num_classes": num_classes,
        "dataset": dataset,
        "batch_size": args.batch_size,
        "normalization": normalization,
        "devices": f"{mesh.devices.size} x {jax.devices()[0].device_kind}",
        "clean": clean,
        "cifar100c": robust,
        "written_by": f"jaxkd {__version__} evaluate",
    }
    if streamed:
        results["transforms"] = {"eval_resize": args.eval_resize, "eval_crop": args.eval_crop}
    distributed.print_once(format_report(results))
    if out is not None and distributed.is_primary():
        write_json(results, out, args.force)
        print(f"\nwrote {out}")
    return results


def check_streaming_arguments(args, streamed: bool) -> None:
    """One line for a streamed-source option given with an array source (it would be ignored), or for sizes
    and worker counts out of range."""
    if not streamed:
        given = [flag for flag, value in (("--tfds-name", args.tfds_name), ("--split", args.split))
                 if value is not None]
        given += [flag for flag, value, default in (("--eval-resize", args.eval_resize, 256),
                                                    ("--eval-crop", args.eval_crop, 224),
                                                    ("--workers", args.workers, HOST_CORES)) if value != default]
        if given:
            raise UserError(f"{given[0]} sets the streamed sources ({', '.join(STREAMING_SOURCES)}), not --source "
                            f"{args.source}")
    for flag, value, low in (("--eval-resize", args.eval_resize, 1), ("--eval-crop", args.eval_crop, 1),
                             ("--workers", args.workers, HOST_CORES)):
        if value < low:
            raise UserError(f"{flag} must be an integer >= {low}, got {value}")


def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(prog="python -m jaxkd.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="a model checkpoint directory (convert import, training), a training workdir or a .pth file")
    parser.add_argument("--arch", help="architecture name (default: from the checkpoint or the .pth shapes)")
    parser.add_argument("--cifar100c", metavar="DIR", help="the CIFAR-100-C folder (labels.npy, <corruption>.npy)")
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    add_data_arguments(parser, streamed=True)
    return parser


def normalization_name(value: str) -> str:
    """`--normalization`'s value, pytorch-kd's old spelling "seed" read as today's "pytorch_kd"."""
    return RENAMED_VALUES["data.normalization"].get(value, value)


def add_data_arguments(parser: argparse.ArgumentParser, streamed: bool = False) -> None:
    """The options every evaluation command shares: where the clean test split comes from, batch, progress,
    and the multi-process settings; `streamed`: also the image folder and TFDS image sources (jaxkd.evaluate)."""

    parser.add_argument("--source", default="tfds", choices=SOURCES + (STREAMING_SOURCES if streamed else ()),
                        help="where the clean test split comes from")
    parser.add_argument("--data-dir", help="the source's data directory (see docs/data.md)")
    parser.add_argument("--download", action="store_true", help="fetch or prepare the clean data if absent")
    parser.add_argument("--digits-size", type=int, default=32, choices=DIGITS_SIZES,
                        help="digits' side in pixels, as the model was trained (data.digits_size)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--normalization", choices=tuple(NORMALIZATIONS), type=normalization_name,
                        help="the mean/std the images are normalized with (default: the model's training run's, "
                             "from its metadata; for a .pth, ImageNet's in torchvision's or mdistiller's layout, "
                             "else pytorch-kd's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    if streamed:
        group = parser.add_argument_group("image folder and TFDS image sources (docs/evaluate.md)")
        group.add_argument("--tfds-name", help="the TFDS image-classification dataset of --source tfds_images")
        group.add_argument("--split", help=f"the split evaluated (default: {EVAL_SPLIT} for a folder, "
                                           f"{TFDS_EVAL_SPLIT} for TFDS)")
        group.add_argument("--eval-resize", type=int, default=256, help="Resize: the shorter side, in pixels")
        group.add_argument("--eval-crop", type=int, default=224, help="then CenterCrop, in pixels")
        group.add_argument("--workers", type=int, default=HOST_CORES,
                           help=f"decoding processes ({HOST_CORES}: one per CPU core; 0: threads of this one)")
    distributed.add_process_arguments(parser)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
