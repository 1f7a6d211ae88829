"""`python -m jaxkd.robustness CHECKPOINT ...`: the seed's robustness table, clean CIFAR-100 and CIFAR-100-C
top-1 of several checkpoints (model directories, training workdirs or `.pth` files), one row each, named from
each checkpoint's metadata. Every input is checked before anything is evaluated. Options: docs/evaluate.md."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
from tqdm import tqdm

from jaxkd import __version__
from jaxkd.data.cifar100c import SEVERITIES
from jaxkd.engine import distributed
from jaxkd.engine.evaluation import evaluate_cifar100c, evaluate_split, place_variables
from jaxkd.engine.mesh import data_mesh
from jaxkd.errors import UserError, run_command
from jaxkd.io.model_checkpoint import TRAINED_MODEL_DIR
from jaxkd.io.model_reference import input_normalization, open_model
from jaxkd.io.paths import absolute
from jaxkd.io.safe_write import check_output, write_text_atomically
from jaxkd.methods import display_name
from jaxkd.models import canonical_name, get_model
from jaxkd.tools.evaluate import (add_data_arguments, check_batch_size, load_checked_test_split, open_checked_cifar100c,
                                  percent, write_json)

COLUMNS = ("model", "method", "CIFAR100", "CIFAR100C")
CLEAN_ONLY_COLUMNS = COLUMNS[:3]


@dataclasses.dataclass
class Entry:
    """One checkpoint given on the command line, loaded: what its row needs and what its evaluation needs."""

    argument: str  # as typed
    variables: dict
    arch: str
    num_classes: int
    metadata: dict | None  # None for a .pth
    method: str
    loaded: Path  # what was read: the .pth, the checkpoint directory or the workdir's model/


# ------------------------------------------------------------------------------------------------ naming


def display_arch(arch: str) -> str:
    """The seed's name for an architecture: wideresnet40_2 -> WRN40-2, resnet56 -> ResNet56."""

    name = canonical_name(arch)
    if name.startswith("wideresnet"):
        return "WRN" + name[len("wideresnet"):].replace("_", "-")
    if name.startswith("resnet"):
        return "ResNet" + name[len("resnet"):]
    return name


def method_name(metadata: dict | None, path: Path) -> str:
    """The method cell of a checkpoint: from training's metadata (`method`, `saliencymix`); for a `.pth` its file
    stem; for a directory without a method (`convert import`) the stem of the `.pth` it came from, else its name."""
    if metadata is None:
        return path.stem
    method = metadata.get("method")
    if method is None:
        source = metadata.get("source")
        return Path(source).stem if source else path.name
    name = display_name(str(method))
    return name + " + SaliencyMix" if metadata.get("saliencymix") else name


def parse_labels(labels: list[str], checkpoints: list[str]) -> dict[str, str]:
    """{checkpoint argument: text} from `--label CHECKPOINT=TEXT` values. CHECKPOINT is one of the checkpoints
    as given or the same path written differently; it is split at the '=' that makes it one (paths and texts may
    hold '=' too)."""
    resolved = {}
    for argument in checkpoints:
        resolved.setdefault(Path(argument).expanduser().absolute().resolve(), []).append(argument)
    chosen: dict[str, str] = {}
    for value in labels:
        matches = []
        for at in (i for i, char in enumerate(value) if char == "="):
            key, text = value[:at], value[at + 1:]
            if key and Path(key).expanduser().absolute().resolve() in resolved:
                matches.append((key, text))
        if not matches:
            raise UserError(f"--label {value}: expected CHECKPOINT=TEXT with CHECKPOINT one of the checkpoints given")
        if len(matches) > 1:
            raise UserError(f"--label {value}: ambiguous, several '=' split it into a checkpoint and a text")
        key, text = matches[0]
        if not text.strip():
            raise UserError(f"--label {value}: the text is empty")
        if "|" in text or "\n" in text:
            raise UserError(f"--label {value}: the text cannot hold '|' or a line break (it is a table cell)")
        for argument in resolved[Path(key).expanduser().absolute().resolve()]:
            if argument in chosen:
                raise UserError(f"--label: {argument} is labelled twice")
            chosen[argument] = text.strip()
    return chosen


# ----------------------------------------------------------------------------------------------- loading


def load_entry(argument: str, label: str | None = None) -> Entry:
    """Loads a checkpoint argument (model checkpoint directory, training workdir, .pth) with its metadata."""

    opened = open_model(argument)
    path = opened.path
    named = path.parent if path.name == TRAINED_MODEL_DIR and opened.metadata is not None else path
    return Entry(argument, opened.variables, canonical_name(opened.arch), opened.num_classes, opened.metadata,
                 label or method_name(opened.metadata, named), absolute(path))


# --------------------------------------------------------------------------------------------- reporting


def clean_column_name(source: str) -> str:
    """The clean column's header: CIFAR100 for CIFAR-100's sources, else the source's name (digits)."""
    return source if source == "digits" else "CIFAR100"


def table_rows(columns: list[str], rows: list[dict], clean_name: str = "CIFAR100") -> list[str]:
    """The markdown table of `rows` (dicts holding every column), accuracies with 2 decimals, right-aligned; the
    clean column ("CIFAR100" in the rows) headed `clean_name`."""
    header = [clean_name if column == "CIFAR100" else column for column in columns]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(columns) - 2)]
    lines += ["| " + " | ".join([row["model"], row["method"], *(percent(row[c]) for c in columns[2:])]) + " |"
              for row in rows]
    return lines


def format_table(report: dict) -> str:
    """The markdown written to --out: the table, then one line saying what its columns measure."""
    clean_name = report.get("clean_column", "CIFAR100")
    note = f"Top-1 accuracy (%). {clean_name}: the {report['dataset']} split ({report['clean_images']} images)"
    c100c = report["cifar100c"]
    if c100c is not None:
        evaluated, skipped = c100c["evaluated"], c100c["missing"] + list(c100c["unreadable"])
        note += f"; CIFAR100C: the mean over {len(evaluated)} corruptions x 5 severities ({c100c['images']} images)"
        if skipped:
            note += f", leaving out {len(skipped)} without a readable file: {', '.join(skipped)}"
    return "\n".join(table_rows(report["columns"], report["rows"], clean_name) + ["", note + "."]) + "\n"


def write_text(text: str, out: Path, force: bool) -> None:
    write_text_atomically(text, out, force, "the table")


# ------------------------------------------------------------------------------------------ command line


def _check_outputs(args) -> list[Path]:
    outputs = [Path(p) for p in (args.out, args.json) if p]
    if len(outputs) == 2 and outputs[0].absolute().resolve() == outputs[1].absolute().resolve():
        raise UserError(f"--out and --json name the same file {outputs[0]}")
    for out in outputs:
        check_output(out, args.force)
    return outputs


def run(args) -> dict:
    """Checks every input, evaluates every checkpoint, prints the table and writes it; returns the JSON report."""


    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    # Every input first: outputs, options, checkpoints, CIFAR-100-C, the clean split. Nothing is evaluated yet.
    _check_outputs(args)
    check_batch_size(args.batch_size)
    labels = parse_labels(args.label, args.checkpoints)
    entries = [load_entry(argument, labels.get(argument)) for argument in args.checkpoints]
    models = {entry.argument: entry.num_classes for entry in entries}
    c100c, evaluated, unreadable = None, [], {}
    if args.cifar100c:
        c100c, evaluated, unreadable = open_checked_cifar100c(args.cifar100c, models)
    split = load_checked_test_split(args, models)

    mesh = data_mesh()
    devices = f"{mesh.devices.size} x {jax.devices()[0].device_kind}"
    per_model = len(split) + (len(c100c.labels) * len(evaluated) if c100c is not None else 0)
    rows = []
    with tqdm(total=per_model * len(entries), unit="img", leave=False, dynamic_ncols=True,
              disable=True if args.quiet or not distributed.is_primary() else None) as bar:
        for entry in entries:
            bar.set_description(entry.argument)
            model = get_model(entry.arch, entry.num_classes)
            placed = place_variables(entry.variables, mesh)
            normalization = args.normalization or input_normalization(entry.metadata)
            clean = evaluate_split(model, placed, split.images, split.labels, args.batch_size, mesh=mesh,
                                   progress=bar.update, normalization=normalization)
            robust = (evaluate_cifar100c(model, placed, c100c, args.batch_size, mesh=mesh, progress=bar.update,
                                         normalization=normalization) if c100c is not None else None)
            entry.variables = None  # evaluated: let it go
            results = {  # the same record `python -m jaxkd.evaluate --out` writes
                "checkpoint": entry.argument,
                "arch": entry.arch,
                "num_classes": entry.num_classes,
                "dataset": f"{args.source} test",
                "batch_size": args.batch_size,
                "normalization": normalization,
                "devices": devices,
                "clean": clean,
                "cifar100c": robust,
                "written_by": f"jaxkd {__version__} robustness",
            }
            rows.append({"model": display_arch(entry.arch), "method": entry.method, "CIFAR100": clean["top1"],
                         "CIFAR100C": robust["top1"] if robust else None, "checkpoint": entry.argument,
                         "loaded": str(entry.loaded), "metadata": entry.metadata, "results": results})

    report = {
        "columns": list(COLUMNS if c100c is not None else CLEAN_ONLY_COLUMNS),
        "dataset": f"{args.source} test",
        "clean_column": clean_column_name(args.source),  # the header of the rows' "CIFAR100" values
        "clean_images": len(split),
        "cifar100c": None if c100c is None else {
            "directory": str(c100c.directory), "evaluated": list(evaluated), "missing": list(c100c.missing),
            "unreadable": unreadable, "images": len(c100c.labels) * len(evaluated), "severities": list(SEVERITIES)},
        "rows": rows,
        "written_by": f"jaxkd {__version__} robustness",
    }
    table = format_table(report)
    distributed.print_once(table, end="")
    if not distributed.is_primary():  # process 0 writes the files
        return report
    if args.json:
        write_json(report, Path(args.json), args.force)
    if args.out:
        write_text(table, Path(args.out), args.force)
    for out in (args.out, args.json):
        if out:
            print(f"wrote {out}")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxkd.robustness", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                        help="a model checkpoint directory, a training workdir or a .pth; one table row each")
    parser.add_argument("--cifar100c", metavar="DIR",
                        help="the CIFAR-100-C folder (labels.npy, <corruption>.npy); without it, clean top-1 only")
    parser.add_argument("--label", action="append", default=[], metavar="CHECKPOINT=TEXT",
                        help="the method cell for CHECKPOINT (as given above) instead of its metadata or file stem; "
                             "repeat for several")
    parser.add_argument("--out", metavar="FILE", help="write the markdown table to this file")
    parser.add_argument("--json", metavar="FILE", help="write every number (per checkpoint: evaluate's record) as JSON")
    parser.add_argument("--force", action="store_true", help="replace an existing --out or --json")
    add_data_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
