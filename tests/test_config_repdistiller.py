"""configs/repdistiller.py: RepDistiller's recipe for its 13 benchmark pairs and every method jaxkd has, as its
scripts/run_cifar_distill.sh and train_student.py set them (read from the reference, written out here)."""

import pytest

from configs import repdistiller
from jaxkd.errors import UserError
from jaxkd.models import canonical_name
from jaxkd.train import main, parse_command_line

# RepDistiller's README tables: (teacher, student) in its model_dict spelling
SAME_ARCHITECTURE = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"),
                     ("resnet110", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"),
                     ("vgg13", "vgg8")]
CROSS_ARCHITECTURE = [("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"),
                      ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1")]
# run_cifar_distill.sh's -r -a -b per method
WEIGHTS = {"kd": (0.1, 0.9, 0), "fitnet": (1, 0, 100), "at": (1, 0, 1000), "crd": (1, 0, 0.8), "crd_kd": (1, 1, 0.8)}


@pytest.mark.parametrize("teacher, student", SAME_ARCHITECTURE + CROSS_ARCHITECTURE)
def test_every_benchmark_pair_gets_repdistillers_recipe(teacher, student):
    for method, (gamma, alpha, beta) in WEIGHTS.items():
        config = repdistiller.get_config(f"{teacher},{student},{method}")
        assert (config.loss.gamma, config.loss.alpha, config.loss.beta, config.loss.kd_temperature) == (
            gamma, alpha, beta, 4.0), method
        assert config.method == method.removesuffix("_kd")
        assert config.teacher.checkpoint == f"save/models/{teacher}_vanilla/ckpt_epoch_240.pth"
        # train_student.py: lr 0.01 for these students, else 0.05; the rest of its recipe
        assert config.optimizer.lr == (0.01 if student in ("MobileNetV2", "ShuffleV1", "ShuffleV2") else 0.05)
        assert (config.epochs, config.batch_size, config.optimizer.lr_decay_epochs) == (240, 64, (150, 180, 210))
        assert (config.optimizer.lr_decay_timing, config.data.padding, config.data.normalization,
                config.data.drop_last) == ("repdistiller", "zeros", "repdistiller", False)
    # RepDistiller's resnet{n} are its post-activation resnets, never the seed's pre-activation ones
    assert config.model == canonical_name(student.replace("resnet", "rd_resnet") if student.startswith("resnet")
                                          else student)
    assert config.teacher.arch.startswith("rd_") == teacher.startswith("resnet")


def test_the_command_line_takes_the_triple_and_refuses_a_bad_one(capsys):
    flags_ = parse_command_line(["train", "--config", "configs/repdistiller.py:resnet32x4,ShuffleV1,crd",
                                 "--workdir", "unused", "--config.seed=3"])
    assert (flags_.config.model, flags_.config.teacher.arch, flags_.config.seed) == ("ShuffleV1", "rd_resnet32x4", 3)
    assert "crd" in flags_.config and flags_.config.crd.nce_k == 16384
    with pytest.raises(UserError, match="method 'dkd' is not one of none, kd, fitnet"):
        parse_command_line(["train", "--config", "configs/repdistiller.py:resnet32x4,resnet8x4,dkd",
                            "--workdir", "unused"])
    assert main(["train", "--config", "configs/repdistiller.py:resnet32x4", "--workdir", "unused"]) == 2
    assert "takes TEACHER,STUDENT,METHOD" in capsys.readouterr().err
