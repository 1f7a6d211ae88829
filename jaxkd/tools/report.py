"""`python -m jaxkd.report WORKDIR ...`: the table of training runs, mean +- std over seeds of the last- and
best-epoch test top-1 per (teacher, student, method, SaliencyMix), beside the published numbers of the same data
and recipe (jaxkd.tools.published). Runs whose config differs from their group's in more than the seed (and
IGNORED_KEYS), unfinished runs and duplicates are named under "Not merged", never averaged in. Options and
outputs: docs/reproduce.md."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import sys
from pathlib import Path

import numpy as np

from jaxkd.errors import UserError, run_command
from jaxkd.io.model_checkpoint import TRAINED_MODEL_DIR
from jaxkd.io.paths import as_path, check_cloud_location, is_url, resolved
from jaxkd.io.safe_write import check_output, write_atomically, write_text_atomically
from jaxkd.io.workdir import RESUME_MAY_CHANGE, with_added_keys, without_keys
from jaxkd.methods import METHODS, display_name
from jaxkd.models import canonical_name
from jaxkd.tools.published import SOURCES, published_for
from jaxkd.tools.robustness import display_arch

# Config keys in which the runs of one group may differ, and why (dotted: a key of a section).
IGNORED_KEYS = {
    "seed": "what the runs of a group are meant to differ in",
    **{key: "a resumed run may change it (jaxkd.io.workdir.RESUME_MAY_CHANGE): logging, intervals, float rounding"
       for key in RESUME_MAY_CHANGE if key != "epochs"},  # epochs stays: it is what "last epoch" means
    "teacher.checkpoint": "a path, written per machine or workdir: the same teacher file is often reached by "
                          "different paths; the group's distinct paths are listed under the table",
    "data.data_dir": "where the data lives on that machine",
    "data.download": "whether missing data may be fetched",
}
# by config.data.source, and for the streaming path's TFDS datasets by config.data.tfds_name (docs/data.md)
DATA_NAMES = {"tfds": "CIFAR-100", "cifar100-python": "CIFAR-100", "digits": "digits", "imagefolder": "image folder"}
TFDS_IMAGE_DATA_NAMES = {"imagenet2012": "ImageNet"}
PLOT_PANEL_PIXELS = (400, 300)  # width, height of one group's panel in --plot
PLOT_COLUMNS = 3


# ------------------------------------------------------------------------------------------------ one run


@dataclasses.dataclass
class Run:
    workdir: Path  # as given
    config: dict
    evaluations: list[dict]  # the `eval` rows of metrics.jsonl, by step
    teacher: str | None  # the teacher's architecture (or file name when unknown); None without a teacher

    @property
    def seed(self):
        return self.config.get("seed")

    @property
    def epochs(self) -> int:
        return int(self.config.get("epochs", 0))

    def top1_by_epoch(self) -> dict[int, float]:
        """Each evaluated epoch's test top-1, up to config.epochs (a later row, if any, wins)."""
        return {int(row["epoch"]): float(row["top1"]) for row in self.evaluations if int(row["epoch"]) <= self.epochs}

    @property
    def finished(self) -> bool:
        return self.epochs in self.top1_by_epoch()

    @property
    def last_top1(self) -> float:
        return self.top1_by_epoch()[self.epochs]

    @property
    def best_top1(self) -> float:
        return max(self.top1_by_epoch().values())

    @property
    def data(self) -> str:
        """The dataset the run trained on, as the published sources name it."""
        data = self.config.get("data") or {}
        if data.get("source") == "tfds_images":
            return TFDS_IMAGE_DATA_NAMES.get(str(data.get("tfds_name")), str(data.get("tfds_name")))
        return DATA_NAMES.get(str(data.get("source")), "unknown")

    @property
    def recipe(self) -> str:
        """The run's schedule in short: batch, lr (as trained: scaled to the batch where `lr_scaling` is linear) and
        its decay epochs."""
        optimizer = self.config.get("optimizer") or {}
        decay = ",".join(str(epoch) for epoch in optimizer.get("lr_decay_epochs") or ()) or "none"
        lr, batch = optimizer.get("lr"), self.config.get("batch_size")
        if optimizer.get("lr_scaling") == "linear":  # jaxkd.engine.optimizer.base_learning_rate
            lr = f"{lr * batch / optimizer['lr_reference_batch']:g} ({lr} per {optimizer['lr_reference_batch']})"
        return f"batch {batch}, lr {lr}, x{optimizer.get('lr_decay_rate')} at {decay}"

    def fits(self, source) -> bool:
        """Whether a published number of `source` (a jaxkd.tools.published.Source) compares with this run: the same data,
        epochs and batch size as the recipe it was published for (epochs or batch not compared where the source's
        numbers differ in them: None)."""
        return (self.data == source.data and source.epochs in (None, self.epochs)
                and source.batch_size in (None, self.config.get("batch_size")))

    @property
    def key(self) -> tuple:
        # config.data.saliencymix, or at the top level for runs started before it moved
        saliencymix = self.config.get("data", {}).get("saliencymix", self.config.get("saliencymix"))
        return (self.teacher, self.config.get("model"), method_label(self.config), bool(saliencymix))


def method_label(config: dict) -> str:
    """The method as the report names it: `config.method`, `+kd` added when a method other than KD also has the KD
    term (`loss.alpha` > 0: RepDistiller's CRD+KD column), `+ls` with logit standardization (the KD term's
    `loss.logit_standardization` or the method's own, DKD's: configs/mdistiller.py's kd_ls and dkd_ls); CTKD as
    `BASE+ctkd` (`kd+ctkd`, `dkd+ctkd`); the base loss of a method on top of another where not KD (SDD's
    `sdd.base`: `sdd+dkd`, the SDD README's SD-DKD); `+dot` when trained with DOT (`optimizer.dot`:
    configs/mdistiller.py's kd_dot and dkd_dot)."""
    method = str(config.get("method", "none"))
    loss = config.get("loss") or {}
    if method == "ctkd":  # CTKD names its base: KD+CTKD, DKD+CTKD (its README's rows)
        method = f"{(config.get('ctkd') or {}).get('base', 'kd')}+ctkd"
    label = f"{method}+kd" if method not in ("none", "kd") and (loss.get("alpha") or 0) > 0 else method
    base = (config.get(method) or {}).get("base")
    label = f"{label}+{base}" if base and base != "kd" else label
    standardized = loss.get("logit_standardization") or (config.get(method) or {}).get("logit_standardization")
    label = f"{label}+ls" if standardized else label
    return f"{label}+dot" if (config.get("optimizer") or {}).get("dot") else label


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise UserError(f"{path}: cannot read {what} ({error.strerror})") from None
    except ValueError:
        raise UserError(f"{path}: not {what} (not JSON)") from None


def teacher_name(config: dict) -> str | None:
    """The teacher's architecture: `teacher.arch`, else the `model` of a teacher workdir's config.json, else the
    teacher file's name as given (its architecture is only known once loaded); None for a method without one."""

    method = METHODS.get(str(config.get("method")))
    teacher = config.get("teacher") or {}
    if method is None or not method.uses_teacher:
        return None
    if teacher.get("arch"):
        return canonical_name(teacher["arch"])
    checkpoint = as_path(str(teacher.get("checkpoint", "")))
    try:
        return canonical_name(json.loads((checkpoint / "config.json").read_text())["model"])
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return f"file {checkpoint.name}"


def load_run(workdir: str) -> Run:
    """A workdir's config and evaluations (a local folder or a `gs://` prefix); one line if it is not a training
    workdir."""
    path = as_path(workdir)
    if is_url(path):
        check_cloud_location(path, workdir)
    if not path.is_dir():
        raise UserError(f"{workdir}: not a directory (expected a jaxkd.train workdir)")
    if not (path / "config.json").is_file():
        raise UserError(f"{workdir}: no config.json (not a jaxkd.train workdir)")
    config = _read_json(path / "config.json", "a run config")
    if not isinstance(config, dict) or "model" not in config:
        raise UserError(f"{path / 'config.json'}: not a jaxkd.train run config")
    evaluations = []
    metrics = path / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # the end of a killed write
                continue
            if isinstance(row, dict) and row.get("kind") == "eval" and "epoch" in row and "top1" in row:
                evaluations.append(row)
    return Run(path if is_url(path) else Path(workdir), config, evaluations, teacher_name(config))


def comparable_config(config: dict) -> dict:
    """`config` without the IGNORED_KEYS."""
    return with_added_keys(without_keys(config, IGNORED_KEYS))  # a copy, in today's layout (moved and added keys)


def _flat(config, prefix="") -> dict:
    if not isinstance(config, dict):
        return {prefix[:-1]: config}
    flat = {}
    for key, value in config.items():
        flat.update(_flat(value, f"{prefix}{key}."))
    return flat


def differing_keys(a: dict, b: dict) -> list[str]:
    fa, fb = _flat(a), _flat(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


# ----------------------------------------------------------------------------------------------- groups


def mean_std(values: list[float]) -> dict:
    """n, mean and sample std (ddof=1; None for n < 2) of `values`; all None when empty."""
    if not values:
        return {"n": 0, "mean": None, "std": None}
    array = np.asarray(values, dtype=np.float64)
    return {"n": len(values), "mean": float(array.mean()),
            "std": float(array.std(ddof=1)) if len(values) > 1 else None}


def robustness_by_workdir(paths: list[str]) -> dict[Path, dict]:
    """{resolved workdir: {"clean": top1, "cifar100c": top1 or None, "source": file}} from the JSON files that
    `jaxkd.tools.robustness --json` (a report with rows) or `jaxkd.tools.evaluate --out` (one record) wrote."""

    found = {}
    for file in paths:
        data = _read_json(as_path(file), "jaxkd.robustness or jaxkd.evaluate results")
        if isinstance(data, dict) and isinstance(data.get("rows"), list):
            records = [(row.get("loaded") or row.get("checkpoint"), row.get("results") or {}) for row in data["rows"]]
        elif isinstance(data, dict) and "clean" in data and "checkpoint" in data:
            records = [(data["checkpoint"], data)]
        else:
            raise UserError(f"{file}: not what jaxkd.tools.robustness --json or jaxkd.tools.evaluate --out writes")
        for checkpoint, results in records:
            try:
                clean = float(results["clean"]["top1"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{file}: a record without clean top-1 ({checkpoint})") from None
            path = resolved(str(checkpoint))
            workdir = path.parent if path.name == TRAINED_MODEL_DIR else path
            c100c = (results.get("cifar100c") or {}).get("top1")
            found[workdir] = {"clean": clean, "cifar100c": None if c100c is None else float(c100c), "source": file}
    return found


def build_report(runs: list[Run], robustness: dict[Path, dict]) -> dict:
    """Groups the runs and computes every number of the table; what is left out, and why, goes to `left_out`."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.key, []).append(run)
    rows, left_out, matched = [], [], set()
    for key, members in groups.items():
        finished = []
        for run in members:
            if run.finished:
                finished.append(run)
                continue
            epochs = sorted(run.top1_by_epoch())
            done = f"last evaluation at epoch {epochs[-1]}" if epochs else "no evaluation yet"
            left_out.append({"workdir": str(run.workdir), "reason": f"unfinished: {done} of {run.epochs}"})
        variants: list[list[Run]] = []
        for run in finished:
            for variant in variants:
                if comparable_config(variant[0].config) == comparable_config(run.config):
                    variant.append(run)
                    break
            else:
                variants.append([run])
        if not variants:
            continue
        kept = max(variants, key=len)  # the first of the largest
        for variant in variants:
            if variant is kept:
                continue
            keys = differing_keys(comparable_config(kept[0].config), comparable_config(variant[0].config))
            for run in variant:
                left_out.append({"workdir": str(run.workdir), "reason": f"its config differs from the group's "
                                 f"({len(kept)} runs, e.g. {kept[0].workdir}) in: {', '.join(keys)}"})
        merged, seeds = [], {}
        for run in kept:
            if run.seed in seeds:
                left_out.append({"workdir": str(run.workdir),
                                 "reason": f"same config and seed ({run.seed}) as {seeds[run.seed].workdir}"})
            else:
                seeds[run.seed] = run
                merged.append(run)
        teacher, student, method, saliencymix = key
        first = merged[0]  # the merged runs share their config up to IGNORED_KEYS: data, epochs, recipe
        published, withheld = [], []
        for number in published_for(teacher, student, method, saliencymix):
            (published if first.fits(SOURCES[number.source]) else withheld).append(number)
        robust = []
        for run in merged:
            location = resolved(run.workdir)
            if location in robustness:
                robust.append(robustness[location])
                matched.add(location)
        rows.append({
            "teacher": teacher, "student": student, "method": method, "saliencymix": saliencymix,
            "data": first.data, "epochs": first.epochs, "recipe": first.recipe,
            "runs": len(merged),
            "last_top1": mean_std([run.last_top1 for run in merged]),
            "best_top1": mean_std([run.best_top1 for run in merged]),
            "cifar100": mean_std([r["clean"] for r in robust]),
            "cifar100c": mean_std([r["cifar100c"] for r in robust if r["cifar100c"] is not None]),
            "published": [{"top1": p.top1, "scoring": p.scoring, "runs": SOURCES[p.source].runs,
                           "source": p.source, "cifar100c": p.cifar100c} for p in published],
            # numbers for this teacher, student and method, but of another data or recipe than these runs'
            "published_elsewhere": [{"top1": p.top1, "source": p.source, "recipe": SOURCES[p.source].recipe}
                                    for p in withheld],
            "teacher_checkpoints": sorted({str((run.config.get("teacher") or {}).get("checkpoint", ""))
                                           for run in merged} - {""}),
            "members": [{"workdir": str(run.workdir), "seed": run.seed, "last_top1": run.last_top1,
                         "best_top1": run.best_top1, "curve": sorted(run.top1_by_epoch().items())}
                        for run in merged],
        })
    unmatched = sorted(str(path) for path in set(robustness) - matched)
    return {"std": "sample standard deviation (ddof=1); none for one run",
            "ignored_config_keys": IGNORED_KEYS, "rows": rows, "left_out": left_out,
            "robustness_unmatched": unmatched,
            "sources": {name: dataclasses.asdict(source) for name, source in SOURCES.items()}}


# -------------------------------------------------------------------------------------------------- output


def _arch(name: str | None) -> str:
    if name is None:
        return "-"

    try:
        return display_arch(name)
    except UserError:  # a teacher file's name
        return name


def _stat(cell: dict) -> str:
    if cell["mean"] is None:
        return "-"
    return f"{cell['mean']:.2f}" + (f" ± {cell['std']:.2f}" if cell["std"] is not None else "")


def _published(published: list[dict]) -> str:
    def one(p):
        runs = f", {p['runs']} run" + ("s" if p["runs"] != 1 else "") if p["runs"] else ""
        return f"{p['top1']:.2f} ({p['scoring']}{runs}; {p['source']})"
    return "; ".join(one(p) for p in published) or "-"


def format_markdown(report: dict) -> str:
    with_robustness = any(row["cifar100"]["n"] for row in report["rows"])
    columns = ["teacher", "student", "method", "SaliencyMix", "data", "epochs", "recipe", "runs", "last top-1",
               "best top-1", "published"]
    if with_robustness:
        columns += ["CIFAR-100", "CIFAR-100-C"]
    lines = ["| " + " | ".join(columns) + " |", "|---|---|---|---|---|---:|---|" + "---:|" * 3 + "---|" +
             "---:|" * (len(columns) - 11)]
    for row in report["rows"]:
        cells = [_arch(row["teacher"]), _arch(row["student"]), display_name(row["method"]),
                 "yes" if row["saliencymix"] else "no", row["data"], str(row["epochs"]), row["recipe"],
                 str(row["runs"]), _stat(row["last_top1"]),
                 _stat(row["best_top1"]), _published(row["published"])]
        if with_robustness:
            corrupted = _stat(row["cifar100c"])
            published_c = [p for p in row["published"] if p["cifar100c"] is not None]
            if published_c:
                corrupted += " (published " + "; ".join(f"{p['cifar100c']:.2f}, {p['source']}" for p in published_c) + ")"
            robust_n = row["cifar100"]["n"]
            clean = _stat(row["cifar100"]) + (f" ({robust_n} of {row['runs']} runs)" if robust_n != row["runs"] else "")
            cells += [clean, corrupted]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Test top-1 (%), mean ± std over the runs (seeds) of a group; std: " + report["std"] + ". "
              "last: the final epoch (config.epochs); best: the highest of every evaluated epoch. Published: "
              "the number, how its source scored it (last or best epoch, runs where stated) and the source; only "
              "beside runs of the data, epochs and batch size it was published for."]
    if with_robustness:
        lines.append("CIFAR-100 / CIFAR-100-C: the final models as jaxkd.tools.robustness / jaxkd.tools.evaluate scored them "
                     "(CIFAR-100-C: the mean over corruptions and severities).")
    for row in report["rows"]:
        for p in row["published_elsewhere"]:
            lines.append(f"Not beside {_arch(row['student'])} {display_name(row['method'])} ({row['data']}, "
                         f"{row['epochs']} epochs, {row['recipe']}): {p['source']}'s {p['top1']:.2f}, published "
                         f"for {p['recipe']}.")
    several = [row for row in report["rows"] if len(row["teacher_checkpoints"]) > 1]
    for row in several:
        lines.append(f"Teacher checkpoints of {_arch(row['student'])} {row['method']}: "
                     f"{', '.join(row['teacher_checkpoints'])}.")
    if report["left_out"]:
        lines += ["", "Not merged (left out of the numbers above):"]
        lines += [f"- {entry['workdir']}: {entry['reason']}" for entry in report["left_out"]]
    if report["robustness_unmatched"]:
        lines += ["", "Robustness results for no workdir given: " + ", ".join(report["robustness_unmatched"])]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("teacher", "student", "method", "saliencymix", "data", "epochs", "recipe", "runs", "last_top1_mean",
               "last_top1_std",
               "best_top1_mean", "best_top1_std", "published_top1", "published_scoring", "published_source",
               "cifar100_runs", "cifar100_mean", "cifar100_std", "cifar100c_mean", "cifar100c_std")


def format_csv(report: dict) -> str:
    """One line per group; several published numbers for a group are joined with ';'."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in report["rows"]:
        published = row["published"]
        writer.writerow({
            "teacher": row["teacher"] or "", "student": row["student"], "method": row["method"],
            "saliencymix": row["saliencymix"], "data": row["data"], "epochs": row["epochs"], "recipe": row["recipe"],
            "runs": row["runs"],
            **{f"{name}_{stat}": "" if row[name][stat] is None else repr(row[name][stat])
               for name in ("last_top1", "best_top1") for stat in ("mean", "std")},
            "published_top1": ";".join(str(p["top1"]) for p in published),
            "published_scoring": ";".join(p["scoring"] for p in published),
            "published_source": ";".join(p["source"] for p in published),
            "cifar100_runs": row["cifar100"]["n"],
            **{f"{name}_{stat}": "" if row[name][stat] is None else repr(row[name][stat])
               for name in ("cifar100", "cifar100c") for stat in ("mean", "std")},
        })
    return buffer.getvalue()


def plot_size(groups: int) -> tuple[int, int]:
    """The --plot image's (width, height) in pixels for `groups` panels."""
    columns = min(PLOT_COLUMNS, max(groups, 1))
    return columns * PLOT_PANEL_PIXELS[0], math.ceil(max(groups, 1) / columns) * PLOT_PANEL_PIXELS[1]


def write_plot(report: dict, out: Path, force: bool) -> None:
    """Each group's test top-1 over epochs, one curve per run (labelled by seed), one panel per group."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    rows = report["rows"]
    width, height = plot_size(len(rows))
    columns = min(PLOT_COLUMNS, max(len(rows), 1))
    figure, axes = pyplot.subplots(math.ceil(max(len(rows), 1) / columns), columns, squeeze=False,
                                   figsize=(width / 100, height / 100), dpi=100)
    for index, axis in enumerate(axes.flat):
        if index >= len(rows):
            axis.axis("off")
            continue
        row = rows[index]
        for member in row["members"]:
            epochs, top1 = zip(*member["curve"])
            axis.plot(epochs, top1, linewidth=1, label=f"seed {member['seed']}")
        teacher = f"{_arch(row['teacher'])} → " if row["teacher"] else ""
        mix = " + SaliencyMix" if row["saliencymix"] else ""
        axis.set_title(f"{teacher}{_arch(row['student'])} {display_name(row['method'])}{mix}",
                       fontsize=8)
        axis.set_xlabel("epoch", fontsize=7)
        axis.set_ylabel("test top-1 (%)", fontsize=7)
        axis.tick_params(labelsize=6)
        axis.legend(fontsize=6)
    figure.tight_layout()
    try:
        write_atomically(out, lambda file: figure.savefig(file, format="png", dpi=100), force, "the plot")
    finally:
        pyplot.close(figure)


# ------------------------------------------------------------------------------------------ command line


def _check_outputs(args) -> None:
    outputs = {flag: as_path(path) for flag, path in (("--out", args.out), ("--csv", args.csv), ("--json", args.json),
                                                    ("--plot", args.plot)) if path}
    seen = {}
    for flag, path in outputs.items():
        location = resolved(path)
        if location in seen:
            raise UserError(f"{seen[location]} and {flag} name the same file {path}")
        seen[location] = flag
        check_output(path, args.force)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError("--plot needs matplotlib: pip install 'jaxkd[report]'") from None


def run(args) -> dict:
    """Checks every input and output, builds the report, prints the markdown and writes the files."""
    _check_outputs(args)
    runs = [load_run(workdir) for workdir in args.workdirs]
    robustness = robustness_by_workdir(args.robustness)
    report = build_report(runs, robustness)
    markdown = format_markdown(report)
    print(markdown, end="")
    if args.out:
        write_text_atomically(markdown, as_path(args.out), args.force, "the table")
    if args.csv:
        write_text_atomically(format_csv(report), as_path(args.csv), args.force, "the table")
    if args.json:
        write_text_atomically(json.dumps(report, indent=2) + "\n", as_path(args.json), args.force, "the report")
    if args.plot:
        write_plot(report, as_path(args.plot), args.force)
    for out in (args.out, args.csv, args.json, args.plot):
        if out:
            print(f"wrote {out}")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxkd.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="a jaxkd.train workdir")
    parser.add_argument("--out", metavar="FILE", help="write the markdown table to this file")
    parser.add_argument("--csv", metavar="FILE", help="write the table as CSV")
    parser.add_argument("--json", metavar="FILE", help="write every number, per group and per run, as JSON")
    parser.add_argument("--plot", metavar="FILE", help="write a PNG of each group's test top-1 over epochs")
    parser.add_argument("--robustness", nargs="+", action="extend", default=[], metavar="FILE",
                        help="JSON from jaxkd.tools.robustness --json or jaxkd.tools.evaluate --out for these workdirs")
    parser.add_argument("--force", action="store_true", help="replace existing output files")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
