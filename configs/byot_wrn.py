"""BYOT (self-distillation, no teacher) on WRN16-2 with the seed's recipe: 240 epochs, batch 64, SGD lr 0.05
momentum 0.9, weight decay 5e-4 (the heads included), lr x0.1 after the first step of epochs 150, 180 and 210
(the seed's decay_lr timing).

    python -m jaxkd.train --config configs/byot_wrn.py --workdir workdirs/byot_wrn16_2

Two bottleneck heads (BYOT-U style; docs/methods.md, "What each term is": BYOT) on stages 1 and 2; the network's
own classifier is the deepest. Loss (BYOT-U's `train.py`), alpha 0.1, T 3, lambda 1e-6:
    (1 - alpha) * [CE(deepest) + CE(head1) + CE(head2)]
    + alpha * T^2 * [softCE(head1) + softCE(head2)]          (targets: sg(softmax(deepest / T)))
    + lambda * [||F1 - sg(F)||^2 + ||F2 - sg(F)||^2]          (summed over batch and channels)
The engine computes gamma * CE(deepest) + beta * term, so gamma = 1 - alpha = 0.9 and beta = 1, with the
heads' (1 - alpha) factor inside the term: the total is the formula exactly. Evaluation reports the deepest
classifier (the exported `student.pth`, the plain WRN16-2 in the seed layout), each head and their ensemble.

Why WRN16-2: it is the student of every distillation recipe here (kd_wrn, fitnet_wrn, at_wrn, crd_wrn), so
BYOT's self-distilled WRN16-2 compares directly with the seed's baseline (74.03) and the teacher-based
students, and its heads (64k = 128 channels) are cheap next to the backbone.
"""

from jaxkd.config import recipes


def get_config():
    return recipes.byot()
