"""PyTorch reference of DOT (Zhao et al. 2023, "DOT: A Distillation-Oriented Trainer"), written from
megvii-research/mdistiller `mdistiller/engine/dot.py` (`DistillationOrientedTrainer.step_kd` / `step` and the
functional `dot`) and `mdistiller/engine/trainer.py` (`DOT.init_optimizer`, `DOT.train_iter`; the epoch loop and
`adjust_learning_rate` of `BaseTrainer.train` / `train_epoch`), not from jaxkd's code.

- Momenta (`DOT.init_optimizer`): the task gradient's momentum is MOMENTUM - DOT.DELTA, the distillation
  gradient's MOMENTUM + DOT.DELTA; dampening 0.
- Each step (`DOT.train_iter`): one forward pass giving `loss_ce` and `loss_kd`; zero_grad(set_to_none=True),
  `loss_kd.backward(retain_graph=True)`, `step_kd()` keeps each tensor's distillation gradient (tensors left
  without one, `grad is None`, are not on the distillation side); zero_grad(set_to_none=True),
  `loss_ce.backward()`, `step()` updates.
- `step()` (`dot`): first each tensor with a task gradient: d = g + wd * p; its task buffer is d on its first
  step, else `buf * m_task + d` if the tensor also has a distillation gradient, else `buf * (m_kd + m_task) / 2
  + d`; p -= lr * buf. Then each tensor with a distillation gradient g: its distillation buffer is g (no weight
  decay) on its first step, else `buf * m_kd + g` if the tensor also has a task gradient, else `buf * (m_kd +
  m_task) / 2 + (g + wd * p)`; p -= lr * buf.
"""

import torch


class DistillationOrientedTrainer:
    """The optimizer of `mdistiller/engine/dot.py` for one parameter group: `step_kd()` after the distillation
    loss's backward, `step()` after the task loss's. `task_buffers` / `distill_buffers`: tensor -> momentum buffer
    (a tensor without a buffer has not had a gradient of that side yet)."""

    def __init__(self, params, lr: float, momentum: float, momentum_kd: float, weight_decay: float):
        self.params = list(params)
        self.lr, self.momentum, self.momentum_kd, self.weight_decay = lr, momentum, momentum_kd, weight_decay
        self.task_buffers: dict[torch.Tensor, torch.Tensor] = {}
        self.distill_buffers: dict[torch.Tensor, torch.Tensor] = {}
        self._distill_grads: dict[torch.Tensor, torch.Tensor] = {}

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step_kd(self):
        """Keeps the distillation gradient of every tensor that has one (its `grad` after `loss_kd.backward`)."""
        self._distill_grads = {p: p.grad for p in self.params if p.grad is not None}

    @torch.no_grad()
    def step(self):
        task_grads = {p: p.grad for p in self.params if p.grad is not None}
        mean_momentum = (self.momentum_kd + self.momentum) / 2.0
        for p, grad in task_grads.items():
            d_p = grad.add(p, alpha=self.weight_decay) if self.weight_decay != 0 else grad
            if p not in self.task_buffers:
                self.task_buffers[p] = torch.clone(d_p).detach()
            elif p in self._distill_grads:
                self.task_buffers[p].mul_(self.momentum).add_(d_p)
            else:
                self.task_buffers[p].mul_(mean_momentum).add_(d_p)
            p.add_(self.task_buffers[p], alpha=-self.lr)
        for p, grad in self._distill_grads.items():
            if p not in self.distill_buffers:
                self.distill_buffers[p] = torch.clone(grad).detach()
            elif p in task_grads:
                self.distill_buffers[p].mul_(self.momentum_kd).add_(grad)
            else:
                d_p = grad.add(p, alpha=self.weight_decay) if self.weight_decay != 0 else grad
                self.distill_buffers[p].mul_(mean_momentum).add_(d_p)
            p.add_(self.distill_buffers[p], alpha=-self.lr)
        self._distill_grads = {}


def train(student: torch.nn.Module, teacher: torch.nn.Module, losses, batches, steps_per_epoch: int, lr: float,
          decay_stages, delta: float, decay_rate: float = 0.1, momentum: float = 0.9,
          weight_decay: float = 5e-4) -> tuple[list[dict], DistillationOrientedTrainer]:
    """Trains `student` in place as mdistiller's `DOT` trainer does. `losses(student_out, teacher_out, labels,
    epoch)` -> {"loss_ce": ..., "loss_kd": ...}, from jaxkd.pytorch.torch_zoo's `forward_all` outputs. Returns
    each step's losses and lr, and the optimizer (its momentum buffers)."""
    optimizer = DistillationOrientedTrainer(student.parameters(), lr, momentum - delta, momentum + delta,
                                            weight_decay)
    history = []
    for i, (images, labels) in enumerate(batches):
        epoch = i // steps_per_epoch + 1
        if i % steps_per_epoch == 0:  # adjust_learning_rate at the start of each 1-based epoch
            steps = sum(epoch > stage for stage in decay_stages)
            optimizer.lr = lr * decay_rate**steps if steps > 0 else lr
            student.train()
            teacher.eval()
        student_out = student.forward_all(images)
        with torch.no_grad():
            teacher_out = teacher.forward_all(images)
        terms = losses(student_out, teacher_out, labels, epoch)
        loss_ce, loss_kd = terms["loss_ce"], terms["loss_kd"]
        optimizer.zero_grad()
        loss_kd.backward(retain_graph=True)
        optimizer.step_kd()
        optimizer.zero_grad()
        loss_ce.backward()
        optimizer.step()
        history.append({"loss_ce": loss_ce.item(), "loss_kd": loss_kd.item(), "lr": optimizer.lr})
    return history, optimizer
