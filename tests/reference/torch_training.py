"""PyTorch reference of jaxkd's training step, written from RepDistiller's `train_student.py`,
`helper/loops.py` `train_distill`, `helper/util.py` `adjust_learning_rate` and `distiller_zoo/KD.py`, not from
jaxkd's code.

- Optimizer: `torch.optim.SGD(student.parameters(), lr, momentum=0.9, weight_decay=5e-4, nesterov=False)`,
  weight decay on every trainable tensor (BN scales and biases included); the teacher is not in it.
- Schedule: RepDistiller's `adjust_learning_rate`, called at the start of every 1-based epoch e:
  lr = base_lr * rate^#{d in decay_epochs : e > d} (the same as `MultiStepLR(milestones=decay_epochs)` stepped
  once at the end of every epoch).
- Loss: `gamma * CrossEntropyLoss()(z_s, y) + alpha * DistillKL(T)(z_s, z_t)`, with the teacher in eval mode under
  `no_grad` and the student in train mode (batch statistics; running statistics updated with momentum 0.1 and
  the unbiased batch variance, PyTorch's own BatchNorm).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class DistillKL(nn.Module):
    """RepDistiller's `DistillKL`: KL(p_t || p_s) at temperature T, summed over batch and classes, / B, * T^2."""

    def __init__(self, T: float):
        super().__init__()
        self.T = T

    def forward(self, y_s, y_t):
        p_s = F.log_softmax(y_s / self.T, dim=1)
        p_t = F.softmax(y_t / self.T, dim=1)
        return F.kl_div(p_s, p_t, reduction="sum") * (self.T**2) / y_s.shape[0]


def make_optimizer(student: nn.Module, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 5e-4,
                   nesterov: bool = False) -> torch.optim.SGD:
    return torch.optim.SGD(student.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov)


def adjust_learning_rate(epoch: int, base_lr: float, decay_epochs, decay_rate: float, optimizer) -> float:
    """RepDistiller's helper/util.py, for the 1-based `epoch`, called before the epoch's first step."""
    steps = sum(epoch > d for d in decay_epochs)
    lr = base_lr * (decay_rate**steps) if steps > 0 else base_lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def train_step(student: nn.Module, teacher: nn.Module | None, optimizer, images_nchw: torch.Tensor,
               labels: torch.Tensor, gamma: float, alpha: float, T: float) -> dict:
    """One step of RepDistiller's `train_distill` (or of plain training when `teacher` is None): forward,
    loss, zero_grad, backward, step. Returns the loss terms as floats."""
    _, logits_s = student(images_nchw)
    ce = nn.CrossEntropyLoss()(logits_s, labels)
    if teacher is not None:
        with torch.no_grad():
            _, logits_t = teacher(images_nchw)
        kd = DistillKL(T)(logits_s, logits_t)
    else:
        kd = torch.zeros(())
    loss = gamma * ce + alpha * kd
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return {"loss": loss.item(), "ce": ce.item(), "kd": kd.item(), "lr": optimizer.param_groups[0]["lr"]}


def train(student: nn.Module, teacher: nn.Module | None, batches, steps_per_epoch: int, *, lr: float = 0.05,
          momentum: float = 0.9, weight_decay: float = 5e-4, decay_epochs=(150, 180, 210),
          decay_rate: float = 0.1, gamma: float = 1.0, alpha: float = 0.0, T: float = 4.0) -> list[dict]:
    """Trains `student` in place on `batches` (a list of (images_nchw, labels)), `steps_per_epoch` steps per
    epoch, with RepDistiller's epoch loop: at the start of each epoch the lr is adjusted, the student put in
    train mode and the teacher in eval mode. Returns the per-step `train_step` results."""
    optimizer = make_optimizer(student, lr, momentum, weight_decay)
    history = []
    for i, (images, labels) in enumerate(batches):
        if i % steps_per_epoch == 0:
            adjust_learning_rate(i // steps_per_epoch + 1, lr, decay_epochs, decay_rate, optimizer)
            student.train()
            if teacher is not None:
                teacher.eval()
        history.append(train_step(student, teacher, optimizer, images, labels, gamma, alpha, T))
    return history
