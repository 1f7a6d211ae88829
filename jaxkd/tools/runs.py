"""A table's training runs as a list of commands, and a runner that works through the list on one machine.

    python -m jaxkd.runs list --root workdirs/rd_table [--table NAME] [--pairs T:S,...] [--methods kd,crd ...]
                              [--seeds 0,1,2] [--config FILE] [--out runs.txt] [--force] [-- --config.k=v ...]
    python -m jaxkd.runs run runs.txt

`list` writes one `python -m jaxkd.train` command per (pair, method, seed), each with its own workdir; `run`
runs them in order, skipping finished runs and resuming started ones. Options, exit statuses and schedulers:
docs/reproduce.md, "Running a whole table".
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from jaxkd.config.recipes import (IMAGENET_METHODS, IMAGENET_PAIRS, IMAGENET_UPSTREAM, REPDISTILLER_WEIGHTS, jaxkd_name,
                                  repdistiller_name)
from jaxkd.errors import OUTPUT_ERROR_STATUS, UserError, run_command
from jaxkd.io.safe_write import check_output, write_text_atomically
from jaxkd.tools import published
from jaxkd.tools.report import load_run

TRAIN_COMMAND = ["python", "-m", "jaxkd.train"]
DEFAULT_CONFIG = "configs/repdistiller.py"
IMAGENET_CONFIG = "configs/imagenet.py"  # --table imagenet's default config; its methods: IMAGENET_METHODS
TABLES = ("repdistiller-same", "repdistiller-different", "imagenet")
EXIT_STATUS = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + the signal's number, as jaxkd.train's


def table_pairs(name: str) -> tuple[list[tuple[str, str]], dict[tuple[str, str, str], str]]:
    """The (teacher, student) pairs of a table and its cells that are not run, (teacher, student, method) -> why:
    RepDistiller's README tables in its model names, their N/A cells (FSP where the shapes do not allow it); the
    ImageNet table in jaxkd's names, the cells no upstream repository gives ImageNet settings for (OFD on
    ResNet-34 -> ResNet-18, KD + LS on ResNet-50 -> MobileNetV1)."""
    if name == "imagenet":
        not_applicable = {(*pair, method): "no ImageNet setting for the pair upstream (jaxkd/config/recipes.py "
                                           "IMAGENET_UPSTREAM)"
                          for pair, folder in IMAGENET_PAIRS.items() for method in IMAGENET_METHODS
                          if folder not in IMAGENET_UPSTREAM[method]}
        return list(IMAGENET_PAIRS), not_applicable
    tables = {"repdistiller-same": (published.REPDISTILLER_PAIRS_SAME, published.REPDISTILLER_TABLE_SAME),
              "repdistiller-different": (published.REPDISTILLER_PAIRS_DIFFERENT,
                                         published.REPDISTILLER_TABLE_DIFFERENT)}
    if name not in tables:
        raise UserError(f"--table {name!r}: known tables are {', '.join(TABLES)}")
    pairs, numbers = tables[name]
    pairs = [(repdistiller_name(teacher), repdistiller_name(student)) for teacher, student in pairs]
    repdistiller_methods = set(published.REPDISTILLER_TABLE_SAME) | set(published.REPDISTILLER_TABLE_DIFFERENT)
    not_applicable = {(*pair, method): "N/A in RepDistiller's table" for method in repdistiller_methods
                      for i, pair in enumerate(pairs) if method not in numbers or numbers[method][i] is None}
    return pairs, not_applicable


def parse_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        teacher, colon, student = item.partition(":")
        if not colon or not teacher or not student:
            raise UserError(f"--pairs {text!r}: each pair is TEACHER:STUDENT, got {item!r}")
        pairs.append((teacher.strip(), student.strip()))
    return pairs


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: a comma-separated list of integers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: at least one seed, each once")
    return seeds


def run_commands(pairs, methods, seeds, root: str, config: str, extra: list[str],
                 not_applicable: dict | None = None) -> list[str]:
    """One shell command line per (pair, method, seed), in that order: the seeds of a cell run one after
    another, so that a cell's first numbers come early. A cell in `not_applicable` is one comment line, saying
    why."""
    not_applicable = not_applicable or {}
    lines = []
    for teacher, student in pairs:
        for method in methods:
            if (teacher, student, method) in not_applicable:
                lines.append(f"# {method} on {teacher} -> {student}: {not_applicable[(teacher, student, method)]}")
                continue
            for seed in seeds:
                workdir = f"{root.rstrip('/')}/{teacher}-{student}/{method}/seed{seed}"
                argv = [*TRAIN_COMMAND, "--config", f"{config}:{teacher},{student},{method}", "--workdir", workdir,
                        f"--config.seed={seed}", *extra]
                lines.append(shlex.join(argv))
    return lines


def list_runs(args) -> list[str]:
    """`list`: checks the pairs and methods against the config's recipes before writing anything."""
    if not args.table and not args.pairs:
        raise UserError(f"name the pairs: --table {'|'.join(TABLES)} and/or --pairs T:S,...")
    pairs, not_applicable = table_pairs(args.table) if args.table else ([], {})
    pairs += parse_pairs(args.pairs) if args.pairs else []
    if args.config is None:
        args.config = IMAGENET_CONFIG if args.table == "imagenet" else DEFAULT_CONFIG
    known_methods = {Path(DEFAULT_CONFIG).name: REPDISTILLER_WEIGHTS,
                     Path(IMAGENET_CONFIG).name: IMAGENET_METHODS}.get(Path(args.config).name)
    methods = ([m.strip() for m in args.methods.split(",") if m.strip()] if args.methods
               else list(known_methods or REPDISTILLER_WEIGHTS))
    if known_methods is not None:  # the config's checks: a typo found now, not at the 40th run
        unknown = [m for m in methods if m not in known_methods]
        if unknown:
            raise UserError(f"--methods: {unknown[0]!r} is not one of {', '.join(known_methods)}")
        for name in {name for pair in pairs for name in pair}:
            jaxkd_name(name)  # an unknown model is one line
    if args.extra and args.extra[0] != "--":
        raise UserError(f"unexpected argument {args.extra[0]!r}: flags for every run go after `--`")
    extra = args.extra[1:]
    if any(flag.startswith("--config.seed") for flag in extra):
        raise UserError("the seeds are --seeds, not --config.seed after `--`")
    lines = run_commands(pairs, methods, parse_seeds(args.seeds), args.root, args.config, extra, not_applicable)
    text = "".join(line + "\n" for line in lines)
    if args.out:
        check_output(Path(args.out), args.force)
        write_text_atomically(text, Path(args.out), args.force, "the run list")
        runs = sum(not line.startswith("#") for line in lines)
        print(f"wrote {runs} runs to {args.out}", file=sys.stderr)
    else:
        print(text, end="")
    return lines


# ------------------------------------------------------------------------------------------------- run


def workdir_of(argv: list[str], where: str) -> str:
    for i, arg in enumerate(argv):
        if arg == "--workdir" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--workdir="):
            return arg.split("=", 1)[1]
    raise UserError(f"{where}: the command has no --workdir")


def read_run_list(path: str) -> list[tuple[list[str], str]]:
    """(argv, workdir) of every command of the file, checked before anything runs."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise UserError(f"{path}: cannot read the run list ({error.strerror})") from None
    runs, seen = [], {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            argv = shlex.split(line)
        except ValueError as error:
            raise UserError(f"{where}: cannot parse the command ({error})") from None
        if argv[:3] != TRAIN_COMMAND:
            raise UserError(f"{where}: not a `python -m jaxkd.train` command")
        workdir = workdir_of(argv, where)
        key = Path(workdir).expanduser().absolute()
        if key in seen:
            raise UserError(f"{where}: workdir {workdir} is also line {seen[key]}'s")
        seen[key] = number
        runs.append((argv, workdir))
    if not runs:
        raise UserError(f"{path}: no commands")
    return runs


def finished(workdir: str) -> bool:
    """Whether the run in `workdir` has evaluated its final epoch (what jaxkd.tools.report counts as finished)."""

    try:
        return load_run(workdir).finished
    except UserError:  # not started, or not a workdir yet
        return False


class ForwardedStop:
    """While installed: SIGTERM and SIGINT are passed to the current run once each time they arrive (the run
    is in its own process group, so a terminal's Ctrl-C reaches it only this way, not twice) and remembered."""

    def __init__(self):
        self.signal: signal.Signals | None = None
        self.child: subprocess.Popen | None = None
        handled = [signum for signum in EXIT_STATUS if signal.getsignal(signum) is not signal.SIG_IGN]
        self._previous = {signum: signal.signal(signum, self._handle) for signum in handled}

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum)
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def restore(self):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def run_list(args) -> int:
    """`run`: the list's runs in order; returns the exit status."""
    runs = read_run_list(args.run_list)
    failed, stop = [], ForwardedStop()
    try:
        for number, (argv, workdir) in enumerate(runs, 1):
            if stop.signal is not None:
                break
            if finished(workdir):
                print(f"[{number}/{len(runs)}] finished, skipped: {workdir}", flush=True)
                continue
            print(f"[{number}/{len(runs)}] running: {shlex.join(argv)}", flush=True)
            # the list's `python` is the one running this list (its environment)
            stop.child = subprocess.Popen([sys.executable, *argv[1:]], process_group=0)
            status = stop.child.wait()
            stop.child = None
            if stop.signal is not None or status in EXIT_STATUS.values():
                print(f"stopped during {workdir}: run the same list again to resume it", flush=True)
                return EXIT_STATUS.get(stop.signal, status)
            if status == OUTPUT_ERROR_STATUS:  # a full disk or a refused upload: the next runs would fail alike
                print(f"[{number}/{len(runs)}] could not write its outputs (see its error line): {workdir}; stopped "
                      f"the list: free space (or fix the storage) and run the same list again to resume it",
                      flush=True)
                return OUTPUT_ERROR_STATUS
            if status != 0:
                print(f"[{number}/{len(runs)}] failed with exit status {status}: {workdir}", flush=True)
                failed.append(workdir)
    finally:
        stop.restore()
    if failed:
        print(f"{len(failed)} of {len(runs)} runs failed: {', '.join(failed)}", flush=True)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxkd.runs", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("list", help="write the commands of a table's runs, one per line")
    make.add_argument("--root", required=True, help="the folder that holds the runs' workdirs")
    make.add_argument("--table", help="the pairs of a table: RepDistiller's repdistiller-same or "
                      "repdistiller-different, or imagenet (mdistiller's ImageNet pairs, configs/imagenet.py)")
    make.add_argument("--pairs", help="TEACHER:STUDENT,... in RepDistiller's model names (or jaxkd's)")
    make.add_argument("--methods", help="comma list (default: every method of the config: configs/repdistiller.py's, "
                      "configs/imagenet.py's)")
    make.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default 0,1,2)")
    make.add_argument("--config", help="a config taking TEACHER,STUDENT,METHOD (default: configs/repdistiller.py, "
                      "configs/imagenet.py with --table imagenet)")
    make.add_argument("--out", metavar="FILE", help="write the list here (default: print it)")
    make.add_argument("--force", action="store_true", help="replace an existing --out file")
    make.add_argument("extra", nargs=argparse.REMAINDER, help="-- then flags added to every command")
    execute = commands.add_parser("run", help="run a list's commands in order, skipping finished runs")
    execute.add_argument("run_list", metavar="RUNS.txt")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        return run_command(list_runs, args)
    outcome = {"status": 0}  # run_list's exit status, unless a user mistake makes it 2

    def run_and_keep_status():
        outcome["status"] = run_list(args)

    return run_command(run_and_keep_status) or outcome["status"]


if __name__ == "__main__":
    sys.exit(main())
