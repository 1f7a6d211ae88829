"""PyTorch reference of CTKD, written from the authors' zhengli97/CTKD (commit 7d52522), not from jaxkd's:
`models/temp_global.py` (`Global_T`, `GradientReversalFunction`), `train_student.py` (`CosineDecay`, the
options `--t_start`, `--t_end`, `--decay_max`, `--decay_min`, `--decay_loops`), `distiller_zoo/KD.py`
(`DistillKL`), `distiller_zoo/DKD.py` (`DKDloss`) and the temperature and loss lines of `helper/loops.py`
`train_distill`. CUDA calls (`.cuda()`) left out; everything else as there."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class GradientReversalFunction(torch.autograd.Function):
    """temp_global.py: the identity forward; backward, the gradient times `lambda_` (the curriculum value, <= 0)."""

    @staticmethod
    def forward(ctx, x, lambda_):
        ctx.lambda_ = lambda_
        return x.clone()

    @staticmethod
    def backward(ctx, grads):
        lambda_ = grads.new_tensor(ctx.lambda_)
        return lambda_ * grads, None


class GlobalT(nn.Module):
    """temp_global.py `Global_T`: one parameter, ones(1), through the reversal layer."""

    def __init__(self):
        super().__init__()
        self.global_T = nn.Parameter(torch.ones(1), requires_grad=True)

    def forward(self, fake_input1, fake_input2, lambda_):
        return GradientReversalFunction.apply(self.global_T, lambda_)


class CosineDecay:
    """train_student.py `CosineDecay` (run_cifar_distill.sh: max 0, min -1, 10 loops, `get_value(epoch)` with the
    1-based epoch before each epoch)."""

    def __init__(self, max_value, min_value, num_loops):
        self._max_value, self._min_value, self._num_loops = max_value, min_value, num_loops

    def get_value(self, i):
        i = min(max(i, 0), self._num_loops)
        value = (math.cos(i * math.pi / self._num_loops) + 1.0) * 0.5
        return value * (self._max_value - self._min_value) + self._min_value


def learned_temperature(mlp: GlobalT, logit_t, logit_s, cos_value, t_start: float = 1.0, t_end: float = 20.0):
    """train_distill: `temp = mlp_net(logit_t, logit_s, cos_value); temp = opt.t_start + opt.t_end *
    torch.sigmoid(temp)` (shape (1,))."""
    temp = mlp(logit_t, logit_s, cos_value)
    return t_start + t_end * torch.sigmoid(temp)


def distill_kl(y_s, y_t, temp):
    """KD.py `DistillKL.forward(y_s, y_t, temp)`: batchmean KL at T = temp, times T * T (shape (1,))."""
    T = temp
    return nn.KLDivLoss(reduction="batchmean")(F.log_softmax(y_s / T, dim=1), F.softmax(y_t / T, dim=1)) * T * T


def kl_div_sum(log_input, target):
    """`F.kl_div(log_input, target, reduction="sum")` with the gradient w.r.t. `target` that the authors' runs had:
    0 where target == 0. Under CTKD the teacher's softmax carries the temperature's gradient, and NCKD's teacher
    probability of the target class (its logit shifted by -1000) is exactly 0. The PyTorch installed here (2.x)
    computes `kl_div` through `xlogy(target, target)`, whose gradient there is NaN, which would make the temperature
    NaN from the first step; the authors report DKD+CTKD results, trained with the PyTorch 1.11 of their
    requirements.txt, whose `kl_div` has a backward of its own (to our reading, target's gradient masked to 0 where
    target == 0). Forward: the sum of target * (log target - input), 0 where target == 0, as F.kl_div's."""
    positive = target > 0
    safe_target = torch.where(positive, target, torch.ones_like(target))
    return torch.where(positive, target * (torch.log(safe_target) - log_input), torch.zeros_like(target)).sum()


def dkd_loss(logits_student, logits_teacher, target, alpha, beta, temperature):
    """DKD.py `DKDloss.forward`: (alpha * TCKD + beta * NCKD, TCKD, NCKD), the temperature a (1,) tensor."""
    target = target.reshape(-1)
    gt_mask = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
    other_mask = torch.ones_like(logits_student).scatter_(1, target.unsqueeze(1), 0).bool()

    def cat_mask(t):
        return torch.cat([(t * gt_mask).sum(dim=1, keepdims=True), (t * other_mask).sum(1, keepdims=True)], dim=1)

    pred_student = cat_mask(F.softmax(logits_student / temperature, dim=1))
    pred_teacher = cat_mask(F.softmax(logits_teacher / temperature, dim=1))
    tckd = F.kl_div(torch.log(pred_student), pred_teacher, reduction="sum") * (temperature**2) / target.shape[0]
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd = kl_div_sum(log_pred_student_part2, pred_teacher_part2) * (temperature**2) / target.shape[0]
    return alpha * tckd + beta * nckd, tckd, nckd
