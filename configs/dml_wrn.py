"""DML with two WRN16-2 peers (Zhang et al. 2018, the PyTorch references' variant): one forward per batch,
simultaneous updates, each peer's loss CE + KL(sg(p_peer) || p_self) at T = 1; the seed's recipe
(jaxkd/config/default.py: lr x0.1 after the first step of epochs 150, 180, 210), every peer with its own momentum
and weight decay. No teacher.

    python -m jaxkd.train --config configs/dml_wrn.py --workdir workdirs/dml_wrn16_2

The student (`model/`, `student.pth`) is peer 0; the other peers are evaluated beside it every epoch
(`peer1_top1`, and `ensemble_top1` for the mean of the softmaxes) and exported as `peer1/` and `peer1.pth`.
More peers: `--config.dml.peers=wideresnet16_2,wideresnet16_2` (K = 3; the KL is divided by K - 1).
Expected: each peer somewhat above a WRN16-2 trained alone (73.26 in the CRD paper's Table 1); the DML paper
reports gains of one to a few points for pairs of equal CIFAR-100 networks (no jaxkd CIFAR-100 run recorded yet).
"""

from jaxkd.config import recipes


def get_config():
    return recipes.dml()
