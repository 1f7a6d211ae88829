"""PyTorch reference of MLKD's loss, written from the authors' code (not from jaxkd's):
Jin-Ying/Multi-Level-Logit-Distillation (commit 5ee473f) `mdistiller/distillers/KD_ours.py`: `kd_loss`, `cc_loss`,
`bc_loss` and `KD_ours.forward_train` from the models' outputs on (the losses dict its `AugTrainer.train_iter`
sums). The per-temperature sums are written out term by term as there, the weak-view logits in the strong view's
KD at temperatures 2 and 6 and the unused strong-view class and batch losses included."""

import numpy as np
import torch
import torch.nn.functional as F


def kd_loss(logits_student, logits_teacher, temperature):
    log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    return F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean() * temperature**2


def cc_loss(logits_student, logits_teacher, temperature):
    _, class_num = logits_teacher.shape
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    student_matrix = torch.mm(pred_student.transpose(1, 0), pred_student)
    teacher_matrix = torch.mm(pred_teacher.transpose(1, 0), pred_teacher)
    return ((teacher_matrix - student_matrix) ** 2).sum() / class_num


def bc_loss(logits_student, logits_teacher, temperature):
    batch_size, _ = logits_teacher.shape
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    student_matrix = torch.mm(pred_student, pred_student.transpose(1, 0))
    teacher_matrix = torch.mm(pred_teacher, pred_teacher.transpose(1, 0))
    return ((teacher_matrix - student_matrix) ** 2).sum() / batch_size


def kd_ours_losses(s_weak, s_strong, t_weak, t_strong, target, temperature=4.0, ce_weight=0.1, kd_weight=0.9):
    """`KD_ours.forward_train`'s losses dict, from the student's and the teacher's logits on both views."""
    t_weak, t_strong = t_weak.detach(), t_strong.detach()
    pred_teacher_weak = F.softmax(t_weak, dim=1)
    confidence, _ = pred_teacher_weak.max(dim=1)
    conf_thresh = np.percentile(confidence.cpu().numpy().flatten(), 50)
    mask = confidence.le(conf_thresh).bool()
    class_confidence = torch.sum(pred_teacher_weak, dim=0)
    class_confidence_thresh = np.percentile(class_confidence.cpu().numpy().flatten(), 50)
    class_conf_mask = class_confidence.le(class_confidence_thresh).bool()
    w = kd_weight

    loss_ce = ce_weight * (F.cross_entropy(s_weak, target) + F.cross_entropy(s_strong, target))
    loss_kd_weak = (w * ((kd_loss(s_weak, t_weak, temperature) * mask).mean())
                    + w * ((kd_loss(s_weak, t_weak, 3.0) * mask).mean())
                    + w * ((kd_loss(s_weak, t_weak, 5.0) * mask).mean())
                    + w * ((kd_loss(s_weak, t_weak, 2.0) * mask).mean())
                    + w * ((kd_loss(s_weak, t_weak, 6.0) * mask).mean()))
    loss_kd_strong = (w * kd_loss(s_strong, t_strong, temperature) + w * kd_loss(s_strong, t_strong, 3.0)
                      + w * kd_loss(s_strong, t_strong, 5.0) + w * kd_loss(s_weak, t_weak, 2.0)
                      + w * kd_loss(s_weak, t_weak, 6.0))
    loss_cc_weak = (w * ((cc_loss(s_weak, t_weak, temperature) * class_conf_mask).mean())
                    + w * ((cc_loss(s_weak, t_weak, 3.0) * class_conf_mask).mean())
                    + w * ((cc_loss(s_weak, t_weak, 5.0) * class_conf_mask).mean())
                    + w * ((cc_loss(s_weak, t_weak, 2.0) * class_conf_mask).mean())
                    + w * ((cc_loss(s_weak, t_weak, 6.0) * class_conf_mask).mean()))
    loss_cc_strong = (w * cc_loss(s_strong, t_strong, temperature) + w * cc_loss(s_strong, t_strong, 3.0)  # noqa: F841
                      + w * cc_loss(s_strong, t_strong, 5.0) + w * cc_loss(s_weak, t_weak, 2.0)
                      + w * cc_loss(s_weak, t_weak, 6.0))
    loss_bc_weak = (w * ((bc_loss(s_weak, t_weak, temperature) * mask).mean())
                    + w * ((bc_loss(s_weak, t_weak, 3.0) * mask).mean())
                    + w * ((bc_loss(s_weak, t_weak, 5.0) * mask).mean())
                    + w * ((bc_loss(s_weak, t_weak, 2.0) * mask).mean())
                    + w * ((bc_loss(s_weak, t_weak, 6.0) * mask).mean()))
    loss_bc_strong = (w * ((bc_loss(s_strong, t_strong, temperature) * mask).mean())  # noqa: F841
                      + w * ((bc_loss(s_strong, t_strong, 3.0) * mask).mean())
                      + w * ((bc_loss(s_strong, t_strong, 5.0) * mask).mean())
                      + w * ((bc_loss(s_strong, t_strong, 2.0) * mask).mean())
                      + w * ((bc_loss(s_strong, t_strong, 6.0) * mask).mean()))
    return {"loss_ce": loss_ce, "loss_kd": loss_kd_weak + loss_kd_strong, "loss_cc": loss_cc_weak,
            "loss_bc": loss_bc_weak}
