"""jaxkd.tools.bench_full_run's pieces that need no training run (the run itself is exercised by the GPU script's dry
run, `JAXKD_GPU_DRY_RUN=1 bash benchmarks/gpu/run.sh OUT`): the synthetic dataset, the estimate, the command
line."""

import numpy as np
import pytest

from jaxkd.data import load_split
from jaxkd.errors import UserError
from jaxkd.tools import bench_full_run


def test_the_synthetic_dataset_loads_as_cifar100_python(tmp_path):
    bench_full_run.write_synthetic_cifar100(tmp_path / "cifar-100-python", train_images=6, test_images=4)
    train, test = (load_split("cifar100-python", split, tmp_path) for split in ("train", "test"))
    assert (len(train), len(test), train.num_classes) == (6, 4, 100)
    assert train.images.shape == (6, 32, 32, 3) and train.images.dtype == np.uint8 and train.images.std() > 50


def test_the_whole_run_is_estimated_from_the_first_epoch_and_the_median_later_epoch():
    # the first epoch ends at 30 s (start-up and compiles), then epochs of 2 s, one slowed by a checkpoint
    assert bench_full_run.estimate_total_s([30.0, 32.0, 34.0, 37.0, 39.0], epochs=240) == 30.0 + 239 * 2.0
    assert bench_full_run.estimate_total_s([30.0], epochs=240) is None


def test_the_command_line_checks_its_flags_and_the_config_overrides():
    flags_, overrides = bench_full_run.parse_command_line(
        ["bench_full_run", "--workdir=/tmp/w", "--time_limit=-20", "--", "--config.epochs=3"])
    assert flags_.time_limit == -20 and overrides == ["--config.epochs=3"]
    with pytest.raises(UserError, match="no key 'nope'"):
        bench_full_run.parse_command_line(["bench_full_run", "--workdir=/tmp/w", "--", "--config.nope=1"])
    with pytest.raises(UserError, match="usage"):
        bench_full_run.parse_command_line(["bench_full_run"])
