"""configs/mdistiller.py:T,S,M: the references' weights, temperatures, warm-ups and training recipe for DKD,
DIST, ReviewKD, KD + logit standardization and DKD + logit standardization (values read off the upstream files
named in the config's docstring)."""

import pytest

from configs import mdistiller
from jaxkd.methods import get_method
from jaxkd.report import method_label


def recipe(config) -> tuple:
    return (config.epochs, config.batch_size, config.optimizer.lr, config.optimizer.momentum,
            config.optimizer.weight_decay, tuple(config.optimizer.lr_decay_epochs), config.optimizer.lr_decay_rate,
            config.optimizer.lr_decay_timing, config.data.padding, config.data.normalization, config.data.drop_last)


MDISTILLER_RECIPE = (240, 64, 0.05, 0.9, 5e-4, (150, 180, 210), 0.1, "repdistiller", "zeros", "repdistiller", False)


@pytest.mark.parametrize("pair, beta", [("resnet32x4,resnet8x4", 8.0), ("wrn_40_2,wrn_16_2", 6.0),
                                        ("resnet56,resnet20", 2.0), ("vgg13,vgg8", 6.0)])
def test_dkd_recipes(pair, beta):
    config = mdistiller.get_config(f"{pair},dkd")
    assert recipe(config) == MDISTILLER_RECIPE
    assert (config.method, config.loss.gamma, config.loss.alpha, config.loss.beta) == ("dkd", 1.0, 0.0, 1.0)
    assert dict(config.dkd) == {"alpha": 1.0, "beta": beta, "temperature": 4.0, "warmup": 20}
    assert not config.loss.logit_standardization
    teacher = pair.split(",")[0]
    assert config.teacher.checkpoint == f"download_ckpts/cifar_teachers/{teacher}_vanilla/ckpt_epoch_240.pth"
    assert get_method(config.method, config).settings == dict(config.dkd)


def test_logit_standardization_recipes():
    kd_ls = mdistiller.get_config("resnet32x4,resnet8x4,kd_ls")
    assert (kd_ls.method, kd_ls.loss.gamma, kd_ls.loss.alpha, kd_ls.loss.beta, kd_ls.loss.kd_temperature) == \
        ("kd", 0.1, 9.0, 0.0, 2.0)
    assert kd_ls.loss.logit_standardization and recipe(kd_ls) == MDISTILLER_RECIPE
    # the KD+Ours logs the README links name other settings for some pairs: kd,vgg13,vgg8,3,9.txt and
    # kd,ResNet50,MobileNetV2,3,1.txt
    for pair, temperature, weight in (("vgg13,vgg8", 3.0, 9.0), ("ResNet50,MobileNetV2", 3.0, 1.0)):
        config = mdistiller.get_config(f"{pair},kd_ls")
        assert (config.loss.gamma, config.loss.alpha, config.loss.kd_temperature) == (0.1, weight, temperature)
    # --kd-weight 9 multiplies DKD's alpha 1 and beta 8; the logs: dkd,wrn_40_2,wrn_16_2,2,12,2.0.txt,
    # dkd,resnet56,resnet20,3,18,2.0.txt, dkd,resnet32x4,wrn_40_2,2,9,8.0.txt
    for pair, temperature, alpha, beta in (("resnet32x4,resnet8x4", 2.0, 9.0, 72.0),
                                           ("wrn_40_2,wrn_16_2", 2.0, 12.0, 24.0),
                                           ("resnet56,resnet20", 3.0, 18.0, 36.0),
                                           ("resnet32x4,wrn_40_2", 2.0, 9.0, 72.0)):
        config = mdistiller.get_config(f"{pair},dkd_ls")
        assert config.method == "dkd" and (config.loss.gamma, config.loss.alpha, config.loss.beta) == (1.0, 0.0, 1.0)
        assert dict(config.dkd) == {"alpha": alpha, "beta": beta, "temperature": temperature, "warmup": 20}
        assert config.loss.logit_standardization


def test_dist_and_reviewkd_recipes():
    dist = mdistiller.get_config("resnet32x4,resnet8x4,dist")
    assert (dist.method, dist.loss.gamma, dist.loss.alpha, dist.loss.beta) == ("dist", 1.0, 0.0, 2.0)
    assert dict(dist.dist) == {"beta": 1.0, "gamma": 1.0, "tau": 4.0}
    assert mdistiller.get_config("resnet32x4,ShuffleV1,dist").optimizer.lr == 0.01
    for pair, weight in (("resnet32x4,resnet8x4", 5.0), ("wrn_40_2,wrn_16_2", 5.0), ("resnet56,resnet20", 0.6)):
        config = mdistiller.get_config(f"{pair},reviewkd")
        assert (config.method, config.loss.gamma, config.loss.beta) == ("reviewkd", 1.0, weight)
        assert dict(config.reviewkd) == {"warmup": 20, "student_preact": False, "max_mid_channels": 512}
    with pytest.raises(ValueError, match="not one of"):
        mdistiller.get_config("resnet32x4,resnet8x4,crd")


def test_report_labels_the_standardized_runs_apart():
    """jaxkd.report groups runs by method label: KD + LS and DKD + LS are rows of their own, not KD's and DKD's."""
    labels = {m: method_label(mdistiller.get_config(f"resnet32x4,resnet8x4,{m}").to_dict())
              for m in ("dkd", "dist", "reviewkd", "kd_ls", "dkd_ls")}
    assert labels == {"dkd": "dkd", "dist": "dist", "reviewkd": "reviewkd", "kd_ls": "kd+ls", "dkd_ls": "dkd+ls"}
