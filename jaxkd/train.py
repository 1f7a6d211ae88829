"""Training: `python -m jaxkd.train --config configs/NAME.py --workdir DIR [--config.key=value ...]`.

The command over `jaxkd.engine.loop.train_and_evaluate` (docs/ and `jaxkd.engine` describe the run): the flags,
the multi-process setup, and Ctrl-C as one line."""

import sys

from jaxkd.config.command_line import parse_config_command_line
from jaxkd.engine import distributed, host_allocator
from jaxkd.engine.loop import train_and_evaluate
from jaxkd.errors import UserError, exit_process, run_command

TRAIN_USAGE = "usage: python -m jaxkd.train --config configs/NAME.py --workdir DIR [--config.key=value ...]"


def _define_train_flags(flag_values) -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "where checkpoints, metrics and exports go", flag_values=flag_values)
    flags.DEFINE_string("coordinator_address", None, "multi-process runs: host:port of process 0 "
                        "(docs/scale_out.md)", flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "multi-process runs: how many processes", flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "multi-process runs: this process's id, 0..num_processes-1",
                         flag_values=flag_values)


def parse_command_line(argv):
    """The parsed flags of `python -m jaxkd.train` (`config`, `workdir` and the multi-process settings); a bad
    command line or config raises UserError."""
    flag_values = parse_config_command_line(argv, _define_train_flags, TRAIN_USAGE)
    if not flag_values.workdir:
        raise UserError(TRAIN_USAGE)
    return flag_values


def _train_command(argv) -> None:
    flags_ = parse_command_line(argv)
    distributed.initialize(flags_.coordinator_address, flags_.num_processes, flags_.process_id)
    train_and_evaluate(flags_.config, flags_.workdir)


def main(argv=None) -> int:
    try:
        return run_command(_train_command, sys.argv if argv is None else argv)
    except KeyboardInterrupt:  # a second Ctrl-C before the stop's checkpoint was being written
        print("interrupted: stopped without saving; the same command resumes from the last complete checkpoint",
              file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    host_allocator.keep_freed_memory()  # before JAX starts its threads
    exit_process(main())
