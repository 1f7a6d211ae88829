"""PyTorch reference of a distillation training loop as mdistiller runs it, written from
megvii-research/mdistiller `mdistiller/engine/trainer.py` (`BaseTrainer.train`, `train_epoch`, `train_iter`),
`mdistiller/engine/utils.py` (`adjust_learning_rate`), `tools/train.py` and `mdistiller/distillers/_base.py`
(`Distiller.train`, `get_learnable_parameters`), not from jaxkd's code.

- Optimizer (`BaseTrainer.init_optimizer`): `SGD(distiller.module.get_learnable_parameters(), lr,
  momentum=0.9, weight_decay=5e-4)`: the student's parameters and the method's modules (ReviewKD's ABFs).
- Each 1-based epoch starts with `adjust_learning_rate(epoch)`: lr * 0.1^#{stages < epoch}; the distiller is
  put in train mode, which puts the teacher back in eval mode.
- Each step: `preds, losses_dict = distiller(image, target, epoch=epoch)`, the loss is the sum of the dict's
  values, then zero_grad, backward, step.
"""

import torch


def train(student: torch.nn.Module, teacher: torch.nn.Module, modules: torch.nn.Module | None, losses, batches,
          steps_per_epoch: int, lr: float, decay_stages, decay_rate: float = 0.1, momentum: float = 0.9,
          weight_decay: float = 5e-4) -> list[dict]:
    """Trains `student` (and `modules`) in place. `losses(student_out, teacher_out, labels, epoch)` -> dict of
    the distiller's weighted loss terms, from jaxkd.pytorch.torch_zoo's `forward_all` outputs (TorchOutput). Returns
    each step's terms (floats) and lr."""
    parameters = list(student.parameters()) + (list(modules.parameters()) if modules is not None else [])
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    history = []
    for i, (images, labels) in enumerate(batches):
        epoch = i // steps_per_epoch + 1
        if i % steps_per_epoch == 0:
            steps = sum(epoch > stage for stage in decay_stages)
            for group in optimizer.param_groups:
                group["lr"] = lr * decay_rate**steps if steps > 0 else lr
            student.train()
            if modules is not None:
                modules.train()
            teacher.eval()
        student_out = student.forward_all(images)
        with torch.no_grad():
            teacher_out = teacher.forward_all(images)
        terms = losses(student_out, teacher_out, labels, epoch)
        loss = sum(terms.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({**{name: value.item() for name, value in terms.items()}, "loss": loss.item(),
                        "lr": optimizer.param_groups[0]["lr"]})
    return history
