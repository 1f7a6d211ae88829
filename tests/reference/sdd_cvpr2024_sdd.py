"""PyTorch reference of SDD, written from the authors' code (shicaiwei123/SDD-CVPR2024, not from jaxkd's):
`mdistiller/models/cifar/utils.py` `SPP`, the region logits of the `*_sdd` models' `forward` (e.g.
`mdistiller/models/cifar/wrn.py`: `patch_score = self.fc(x_spp)` over the SPP regions), `mdistiller/distillers/KD.py`
`kd_loss`, `sdd_kd_loss`, `SDD_KD.forward_train`, and `mdistiller/distillers/SDD_DKD.py` `dkd_loss`, `multi_dkd`,
`SDD_DKD.forward_train` (the M == '[1]' branch calls mdistiller's `DKD.py` `dkd_loss`, in
tests/reference/mdistiller_losses.py). `.cuda()` dropped; the NaN and inf guards kept."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class SPP(nn.Module):
    """`SPP(M)`: (B, C, N) regions, 1x1 then 2x2 then 4x4, the 2x2 and 1x1 pooled from the 4x4 grid."""

    def __init__(self, M: str):
        super().__init__()
        self.M = M

    def forward(self, x):
        x_4x4 = F.adaptive_avg_pool2d(x, (4, 4))
        x_2x2 = F.adaptive_avg_pool2d(x_4x4, (2, 2))
        x_1x1 = F.adaptive_avg_pool2d(x_4x4, (1, 1))
        flat = [torch.flatten(p, start_dim=2, end_dim=3) for p in (x_1x1, x_2x2, x_4x4)]
        if self.M == "[1,2,4]":
            return torch.cat(flat, dim=2)
        if self.M == "[1,2]":
            return torch.cat(flat[:2], dim=2)
        if self.M == "[1]":
            return flat[0]
        raise NotImplementedError("ERROR M")


def patch_score(feature_map, fc_weight, fc_bias, M: str):
    """The `*_sdd` models' `patch_score` (B, classes, N): the classifier on each SPP region."""
    x_spp = SPP(M)(feature_map).permute((2, 0, 1))
    m, b, c = x_spp.shape
    score = F.linear(torch.reshape(x_spp, (m * b, c)), fc_weight, fc_bias)
    return torch.reshape(score, (m, b, -1)).permute((1, 2, 0))


def kd_loss(logits_student, logits_teacher, temperature):
    log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    return F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean() * temperature**2


def _global_local_masks(out_t, target, n_regions):
    """`sdd_kd_loss` / `multi_dkd`'s four masks (gt_lw, gw_lt, gw_lw, gt_lt) over the N*B rows, as written."""
    target_r = target.repeat(n_regions)
    out_t_predict = torch.argmax(out_t, dim=1)
    mask_true = out_t_predict == target_r
    mask_false = out_t_predict != target_r
    global_prediction = out_t_predict[0:len(target)]
    global_true_repeat = (global_prediction == target).repeat(n_regions)
    global_false_repeat = (global_prediction != target).repeat(n_regions)
    mask_false[global_false_repeat] = False
    mask_false[0:len(target)] = False
    gt_lw = mask_false
    mask_true[global_true_repeat] = False
    mask_true[0:len(target)] = False
    gw_lt = mask_true
    mask_false = out_t_predict != target_r
    mask_true = out_t_predict == target_r
    mask_false[global_true_repeat] = False
    gw_lw = mask_false
    mask_true[global_false_repeat] = False
    gt_lt = mask_true
    return gt_lw, gw_lt, gw_lw, gt_lt


def _weights(loss, masks):
    gt_lw, gw_lt, gw_lw, gt_lt = masks
    index = torch.zeros_like(loss).float()
    index[gw_lw] = 1.0
    index[gt_lt] = 1.0
    index[gw_lt] = 2.0
    index[gt_lw] = 2.0
    return index


def _rows(out_multi):
    """B x C x N -> N*B x C, region-major."""
    out = out_multi.permute(2, 0, 1)
    return torch.reshape(out, (out.shape[0] * out.shape[1], out.shape[2]))


def sdd_kd_loss(out_s_multi, out_t_multi, T, target):
    out_s, out_t = _rows(out_s_multi), _rows(out_t_multi)
    n_regions = out_t_multi.shape[2]
    p_s = F.log_softmax(out_s / T, dim=1)
    p_t = F.softmax(out_t / T, dim=1)
    loss_kd = F.kl_div(p_s, p_t, reduction="none") * (T**2)
    loss_kd[torch.isnan(loss_kd)] = torch.tensor(0.0)
    loss_kd = torch.sum(loss_kd, dim=1)
    index = _weights(loss_kd, _global_local_masks(out_t, target, n_regions))
    loss = torch.sum(loss_kd * index) / (n_regions * target.shape[0])
    if torch.isnan(loss) or torch.isinf(loss):
        loss = torch.zeros(1).float()
    return loss


def sdd_dkd_rows(logits_student, logits_teacher, target, alpha, beta, temperature):
    """SDD_DKD.py's `dkd_loss`: per row alpha * TCKD + beta * NCKD, each divided by the number of rows."""
    gt_mask = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
    other_mask = torch.ones_like(logits_student).scatter_(1, target.unsqueeze(1), 0).bool()

    def cat_mask(t):
        return torch.cat([(t * gt_mask).sum(dim=1, keepdims=True), (t * other_mask).sum(1, keepdims=True)], dim=1)

    pred_student = cat_mask(F.softmax(logits_student / temperature, dim=1))
    pred_teacher = cat_mask(F.softmax(logits_teacher / temperature, dim=1))
    tckd = F.kl_div(torch.log(pred_student), pred_teacher, reduction="none") * temperature**2 / target.shape[0]
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="none") * temperature**2 / target.shape[0]
    return alpha * torch.sum(tckd, dim=1) + beta * torch.sum(nckd, dim=1)


def multi_dkd(out_s_multi, out_t_multi, target, alpha, beta, temperature):
    out_s, out_t = _rows(out_s_multi), _rows(out_t_multi)
    n_regions = out_t_multi.shape[2]
    loss = sdd_dkd_rows(out_s, out_t, target.repeat(n_regions), alpha, beta, temperature)
    masks = _global_local_masks(out_t, target, n_regions)
    assert sum(int(torch.sum(mask)) for mask in masks) == n_regions * target.shape[0]
    loss = torch.sum(loss * _weights(loss, masks))
    if torch.isnan(loss) or torch.isinf(loss):
        loss = torch.zeros(1).float()
    return loss
