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
- A method's term (`term(student_out, teacher_out)` on both models' `forward_all` outputs, weighted by beta) and
  its trainable modules (`modules`): as RepDistiller's `trainable_list`, the modules are in the optimizer with the
  student (weight decay included) and in train mode.
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
    """SGD over `student`'s parameters (an `nn.ModuleList` of student and method modules: RepDistiller's
    trainable_list)."""
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
               labels: torch.Tensor, gamma: float, alpha: float, T: float, term=None, beta: float = 0.0) -> dict:
    """One step of RepDistiller's `train_distill` (or of plain training when `teacher` is None): forward,
    loss, zero_grad, backward, step. Returns the loss terms as floats."""
    out_s = student.forward_all(images_nchw)
    ce = nn.CrossEntropyLoss()(out_s.logits, labels)
    kd = method_term = torch.zeros(())
    if teacher is not None:
        with torch.no_grad():
            out_t = teacher.forward_all(images_nchw)
        kd = DistillKL(T)(out_s.logits, out_t.logits)
        if term is not None:
            method_term = term(out_s, out_t)
    loss = gamma * ce + alpha * kd + beta * method_term
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return {"loss": loss.item(), "ce": ce.item(), "kd": kd.item(), "term": method_term.item(),
            "lr": optimizer.param_groups[0]["lr"]}


def train(student: nn.Module, teacher: nn.Module | None, batches, steps_per_epoch: int, *, lr: float = 0.05,
          momentum: float = 0.9, weight_decay: float = 5e-4, decay_epochs=(150, 180, 210),
          decay_rate: float = 0.1, gamma: float = 1.0, alpha: float = 0.0, T: float = 4.0, term=None,
          beta: float = 0.0, modules: nn.Module | None = None) -> list[dict]:
    """Trains `student` (and the method's `modules`) in place on `batches` (a list of (images_nchw, labels)),
    `steps_per_epoch` steps per epoch, with RepDistiller's epoch loop: at the start of each epoch the lr is
    adjusted, the student and the modules put in train mode and the teacher in eval mode. Returns the per-step
    `train_step` results."""
    trainable = student if modules is None else nn.ModuleList([student, modules])
    optimizer = make_optimizer(trainable, lr, momentum, weight_decay)
    history = []
    for i, (images, labels) in enumerate(batches):
        if i % steps_per_epoch == 0:
            adjust_learning_rate(i // steps_per_epoch + 1, lr, decay_epochs, decay_rate, optimizer)
            trainable.train()
            if teacher is not None:
                teacher.eval()
        history.append(train_step(student, teacher, optimizer, images, labels, gamma, alpha, T, term, beta))
    return history
