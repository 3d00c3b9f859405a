"""Pure PyTorch reference of the fused distillation loss: the test oracle and the `torch` backend.

Written plainly with autograd (no hand-derived gradients), so that the compiled kernels, whose
gradients are derived by hand, are checked against something independent.  Computes in float32, or
float64 for float64 inputs.  Every ``0 * log 0`` is guarded *before* the product, so neither the value
nor the autograd gradient can become NaN for -inf logits or underflowed probabilities.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .spec import KDSpec


def active_rows(n_rows: int, labels: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                ignore_index: int, device: torch.device) -> torch.Tensor:
    """Rows that count: not masked out and not labelled ``ignore_index``."""
    active = torch.ones(n_rows, dtype=torch.bool, device=device)
    if mask is not None:
        active = active & mask
    if labels is not None:
        active = active & (labels != ignore_index)
    return active


def _teacher_log_probs(teacher: torch.Tensor, spec: KDSpec) -> torch.Tensor:
    """log p_t [N, C]: each teacher tempered at T, then probabilities averaged over the K teachers."""
    values = torch.log(teacher) if spec.teacher_format == "probs" else teacher
    log_q = torch.log_softmax(values / spec.temperature, dim=-1)  # [K, N, C]
    n_teachers = teacher.shape[0]
    if n_teachers == 1:
        return log_q[0]
    return torch.logsumexp(log_q, dim=0) - math.log(n_teachers)


def _soft_term(student: torch.Tensor, teacher: torch.Tensor, spec: KDSpec) -> torch.Tensor:
    """Per-row soft loss (before the T^2 factor)."""
    n_classes = student.shape[-1]
    if spec.divergence == "mse":
        target = teacher.mean(dim=0)  # ensemble target: mean of the teachers' raw logits
        valid = target != float("-inf")  # a -inf teacher logit marks a padded class: skipped (NaN is not)
        zero = torch.zeros_like(target)
        diff = torch.where(valid, student - torch.where(valid, target, zero), zero)
        return (diff * diff).sum(-1) / n_classes

    log_ps = torch.log_softmax(student / spec.temperature, dim=-1)
    log_pt = _teacher_log_probs(teacher, spec)
    ps, pt = log_ps.exp(), log_pt.exp()
    zero = torch.zeros_like(ps)
    on_t, on_s = pt != 0, ps != 0  # (NaN counts as present, so it propagates)
    log_pt_t = torch.where(on_t, log_pt, zero)  # log p_t where p_t > 0, else a harmless 0
    log_ps_t = torch.where(on_t, log_ps, zero)
    log_ps_s = torch.where(on_s, log_ps, zero)
    log_pt_s = torch.where(on_s, log_pt, zero)

    if spec.divergence == "kl":
        return (pt * (log_pt_t - log_ps_t)).sum(-1)
    if spec.divergence == "ce":
        return -(pt * log_ps_t).sum(-1)
    if spec.divergence == "reverse_kl":
        return (ps * (log_ps_s - log_pt_s)).sum(-1)
    if spec.divergence == "jsd":
        beta = spec.beta
        mix = beta * pt + (1.0 - beta) * ps
        log_mix = torch.log(mix.clamp_min(torch.finfo(mix.dtype).tiny))
        kl_t = (pt * (log_pt_t - torch.where(on_t, log_mix, zero))).sum(-1)
        kl_s = (ps * (log_ps_s - torch.where(on_s, log_mix, zero))).sum(-1)
        return beta * kl_t + (1.0 - beta) * kl_s
    raise ValueError(f"divergence: unknown value {spec.divergence!r}")


def kd_rows_reference(student: torch.Tensor, teacher: torch.Tensor, labels: Optional[torch.Tensor],
                      mask: Optional[torch.Tensor], spec: KDSpec,
                      compute_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Per-row loss [N] for student [N, C] and teacher [K, N, C]; differentiable w.r.t. the student.

    Inactive rows (masked, or labelled ignore_index) give exactly 0 loss and 0 gradient.
    ``compute_dtype`` defaults to float32 (float64 for float64 inputs); tests pass the input dtype to get
    "plain eager PyTorch in the same dtype" as the error baseline.
    """
    if compute_dtype is None:
        compute_dtype = torch.float64 if student.dtype == torch.float64 else torch.float32
    s = student.to(compute_dtype)
    t = teacher.detach().to(compute_dtype)
    n_rows = s.shape[0]
    active = active_rows(n_rows, labels, mask, spec.ignore_index, s.device)
    # Inactive rows are replaced by ones (a uniform distribution in every teacher format) so that
    # nothing they hold (NaN, -inf) can reach the value or the gradient.
    s = torch.where(active[:, None], s, torch.ones_like(s))
    t = torch.where(active[None, :, None], t, torch.ones_like(t))

    total = torch.zeros(n_rows, dtype=compute_dtype, device=s.device)
    if spec.alpha > 0.0 and labels is not None:
        safe_labels = torch.where(active, labels, torch.zeros_like(labels))
        hard = F.cross_entropy(s, safe_labels, reduction="none")
        total = total + spec.alpha * hard
    if spec.alpha < 1.0:
        total = total + (1.0 - spec.alpha) * spec.soft_scale * _soft_term(s, t, spec)
    return torch.where(active, total, torch.zeros_like(total))
