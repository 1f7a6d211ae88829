"""PyTorch reference of RepDistiller's CRD, written from RepDistiller's `crd/criterion.py`, `crd/memory.py` and
`dataset/cifar100.py` (`CIFAR100InstanceSample`), not from jaxkd's code; test-only and CPU-only.

Differences from the released code, none of which changes a number on the path RepDistiller trains with:
- `ContrastMemory` requires `contrast_idx` (RepDistiller's CIFAR path always supplies it); the AliasMethod
  fallback, whose constructor calls `.cuda()`, is left out.
- The sampler is `contrast_indices(labels, index, k, rng)`, the index part of `CIFAR100InstanceSample`
  ('exact' mode, percent 1.0) for a batch, with an explicit numpy Generator.
"""

import math

import numpy as np
import torch
import torch.nn as nn

EPS = 1e-7


class Normalize(nn.Module):
    """x / (sum x^2)^(1/2) along dim 1, no eps."""

    def __init__(self, power: int = 2):
        super().__init__()
        self.power = power

    def forward(self, x):
        norm = x.pow(self.power).sum(1, keepdim=True).pow(1.0 / self.power)
        return x.div(norm)


class Embed(nn.Module):
    """flatten -> nn.Linear(dim_in, dim_out) (PyTorch default init) -> Normalize(2)."""

    def __init__(self, dim_in: int = 1024, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.l2norm = Normalize(2)

    def forward(self, x):
        x = x.view(x.shape[0], -1)
        return self.l2norm(self.linear(x))


class ContrastMemory(nn.Module):
    """Two banks with cross scoring, Z frozen from the first call, momentum update after scoring."""

    def __init__(self, input_size: int, output_size: int, k: int, t: float = 0.07, momentum: float = 0.5):
        super().__init__()
        self.n_lem = output_size
        self.K = k
        self.register_buffer("params", torch.tensor([k, t, -1, -1, momentum]))  # float32: T is float32(0.07)
        stdv = 1.0 / math.sqrt(input_size / 3)
        self.register_buffer("memory_v1", torch.rand(output_size, input_size).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_v2", torch.rand(output_size, input_size).mul_(2 * stdv).add_(-stdv))

    def forward(self, v1, v2, y, idx):
        k = int(self.params[0].item())
        t = self.params[1].item()
        z_v1 = self.params[2].item()
        z_v2 = self.params[3].item()
        momentum = self.params[4].item()
        batch_size = v1.size(0)
        output_size = self.memory_v1.size(0)
        input_size = self.memory_v1.size(1)
        # the teacher embedding v2 against the student bank memory_v1, and vice versa
        weight_v1 = torch.index_select(self.memory_v1, 0, idx.view(-1)).detach().view(batch_size, k + 1, input_size)
        out_v2 = torch.exp(torch.div(torch.bmm(weight_v1, v2.view(batch_size, input_size, 1)), t))
        weight_v2 = torch.index_select(self.memory_v2, 0, idx.view(-1)).detach().view(batch_size, k + 1, input_size)
        out_v1 = torch.exp(torch.div(torch.bmm(weight_v2, v1.view(batch_size, input_size, 1)), t))
        if z_v1 < 0:
            self.params[2] = out_v1.mean() * output_size
            z_v1 = self.params[2].clone().detach().item()
        if z_v2 < 0:
            self.params[3] = out_v2.mean() * output_size
            z_v2 = self.params[3].clone().detach().item()
        out_v1 = torch.div(out_v1, z_v1).contiguous()
        out_v2 = torch.div(out_v2, z_v2).contiguous()
        with torch.no_grad():
            for memory, v in ((self.memory_v1, v1), (self.memory_v2, v2)):
                rows = torch.index_select(memory, 0, y.view(-1))
                rows.mul_(momentum)
                rows.add_(torch.mul(v, 1 - momentum))
                norm = rows.pow(2).sum(1, keepdim=True).pow(0.5)
                memory.index_copy_(0, y, rows.div(norm))
        return out_v1, out_v2


class ContrastLoss(nn.Module):
    """NCE loss with Pn = 1/N, c = K Pn, eps 1e-7 in the denominators; the positive is column 0."""

    def __init__(self, n_data: int):
        super().__init__()
        self.n_data = n_data

    def forward(self, x):
        bsz = x.shape[0]
        m = x.size(1) - 1
        pn = 1 / float(self.n_data)
        p_pos = x.select(1, 0)
        log_d1 = torch.div(p_pos, p_pos.add(m * pn + EPS)).log_()
        p_neg = x.narrow(1, 1, m)
        log_d0 = torch.div(p_neg.clone().fill_(m * pn), p_neg.add(m * pn + EPS)).log_()
        return -(log_d1.sum(0) + log_d0.view(-1, 1).sum(0)) / bsz


class CRDLoss(nn.Module):
    """embed_s / embed_t -> ContrastMemory -> ContrastLoss on both sides, summed."""

    def __init__(self, s_dim: int, t_dim: int, feat_dim: int, n_data: int, nce_k: int, nce_t: float = 0.07,
                 nce_m: float = 0.5):
        super().__init__()
        self.embed_s = Embed(s_dim, feat_dim)
        self.embed_t = Embed(t_dim, feat_dim)
        self.contrast = ContrastMemory(feat_dim, n_data, nce_k, nce_t, nce_m)
        self.criterion_t = ContrastLoss(n_data)
        self.criterion_s = ContrastLoss(n_data)

    def forward(self, f_s, f_t, idx, contrast_idx):
        f_s = self.embed_s(f_s)
        f_t = self.embed_t(f_t)
        out_s, out_t = self.contrast(f_s, f_t, idx, contrast_idx)
        return self.criterion_s(out_s) + self.criterion_t(out_t)


class InstanceSampler:
    """The index part of `CIFAR100InstanceSample` ('exact' mode, percent 1.0): per class, every index of every
    other class; per example, `np.random.choice(cls_negative[target], K, replace=(K > len))`."""

    def __init__(self, labels, k: int):
        labels = np.asarray(labels)
        self.labels, self.k = labels, k
        num_classes = int(labels.max()) + 1
        self.cls_positive = [np.where(labels == c)[0] for c in range(num_classes)]
        self.cls_negative = [np.concatenate([self.cls_positive[j] for j in range(num_classes) if j != c])
                             for c in range(num_classes)]

    def sample_idx(self, index: int, rng: np.random.Generator) -> np.ndarray:
        negatives = self.cls_negative[self.labels[index]]
        neg = rng.choice(negatives, self.k, replace=self.k > len(negatives))
        return np.hstack(([index], neg)).astype(np.int64)

    def contrast_indices(self, index, rng: np.random.Generator) -> np.ndarray:
        """(B, K+1): the batch's sample_idx rows, positive first."""
        return np.stack([self.sample_idx(int(i), rng) for i in np.asarray(index)])
