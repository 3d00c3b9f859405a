"""The public loss API: `kd_loss` and its module form `KDLoss`."""
from __future__ import annotations

from typing import Optional, Union

import torch

from .backends import select_backend
from .ops import KDRowsFunction, kd_rows_op
from .reference import active_rows, kd_rows_reference
from .validation import PreparedCall, prepare_call


def _row_weighting(call: PreparedCall):
    """(row_weight tensor or None, loss_scale) that turn the per-row losses into the reduction's terms.

    Folding 1/count into the forward means ``loss.backward()`` needs no extra pass over the gradient.
    """
    n_rows = call.student.shape[0]
    if call.reduction in ("none", "sum"):
        return None, 1.0
    if call.normalizer is not None:
        if isinstance(call.normalizer, torch.Tensor):
            inv = torch.reciprocal(call.normalizer.reshape(1).to(call.student.device, torch.float64))
            return inv.expand(n_rows), 1.0
        return None, 1.0 / float(call.normalizer)
    if call.labels is None and call.mask is None:
        return None, 1.0 / max(n_rows, 1)
    # mean / batchmean over the rows that count.  No host sync; 0 rows -> every row weight is unused.
    count = active_rows(n_rows, call.labels, call.mask, call.spec.ignore_index, call.student.device).sum()
    return torch.reciprocal(count.clamp_min(1).to(torch.float64)).reshape(1).expand(n_rows), 1.0


def _check_grad_inplace(call: PreparedCall, backend: str, student_logits: torch.Tensor) -> None:
    if backend not in ("cpu", "triton") or torch.compiler.is_compiling():
        raise ValueError(f"grad_inplace: supported by the 'cpu' and 'triton' backends in eager mode; got "
                         f"backend {backend!r}{' under torch.compile' if torch.compiler.is_compiling() else ''}")
    if student_logits.is_leaf and student_logits.requires_grad:
        raise ValueError("grad_inplace: student_logits is a leaf that requires grad; its .grad would share "
                         "memory with it.  Use it on computed logits (e.g. the output of an LM head).")
    if torch._debug_has_internal_overlap(call.student) != 0:
        raise ValueError("grad_inplace: the rows of student_logits share memory (an expanded tensor?); "
                         "writing one row's gradient would corrupt another's logits")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
            divergence: str = "kl", beta: float = 0.5, teacher_format: str = "logits",
            labels: Optional[torch.Tensor] = None, alpha: float = 0.0, ignore_index: int = -100,
            mask: Optional[torch.Tensor] = None, reduction: str = "batchmean", scale_t2: bool = True,
            normalizer: Optional[Union[float, torch.Tensor]] = None, backend: str = "auto",
            grad_inplace: bool = False) -> torch.Tensor:
    """Fused distillation loss between student logits ``[..., C]`` and teacher(s) ``[..., C]`` / ``[K, ..., C]``.

    divergence: "kl" = KL(p_t || p_s), "reverse_kl" = KL(p_s || p_t), "jsd" = generalised JSD with weight
    ``beta`` (beta=0: forward KL, beta=1: reverse KL, as in GKD/TRL), "ce" = soft cross-entropy, "mse" =
    mean over classes of squared raw-logit differences (temperature ignored).  K teachers are combined by
    averaging their tempered probabilities.  ``labels``/``alpha`` mix in a hard-label CE at T=1; rows with
    ``ignore_index`` labels or a False ``mask`` do not count.  "mean" and "batchmean" both divide by the
    number of counted rows (unlike ``F.kl_div(reduction="mean")``, which divides by rows x classes);
    ``normalizer`` replaces that count.  The loss is float32 (float64 for float64 inputs).
    Gradient flows to the student only; the teacher is treated as a constant.

    ``grad_inplace=True`` (cpu and triton backends, eager mode) writes the student gradient into the
    memory of ``student_logits`` during the forward, saving one [N, C] buffer (an LM head's logits are
    not needed after the loss).  The logits then hold the gradient; autograd raises if anything else
    saved them for backward.
    """
    call = prepare_call(student_logits, teacher_logits, temperature=temperature, divergence=divergence,
                        beta=beta, teacher_format=teacher_format, labels=labels, alpha=alpha,
                        ignore_index=ignore_index, mask=mask, reduction=reduction, scale_t2=scale_t2,
                        normalizer=normalizer, backend=backend)
    name = select_backend(backend, call.student.device, call.student.dtype)
    if not isinstance(grad_inplace, bool):
        raise TypeError(f"grad_inplace: expected a bool, got {type(grad_inplace).__name__}")
    if grad_inplace:
        _check_grad_inplace(call, name, student_logits)
    row_weight, loss_scale = _row_weighting(call)
    if name == "torch":
        rows = kd_rows_reference(call.student, call.teacher, call.labels, call.mask, call.spec)
        if row_weight is not None:
            rows = rows * row_weight.to(rows.dtype)
        rows = rows * loss_scale
    else:
        spec = call.spec
        compute_grad = torch.is_grad_enabled() and call.student.requires_grad
        if torch.compiler.is_compiling():
            rows, _ = kd_rows_op(call.student, call.teacher.detach(), call.labels, call.mask, spec.temperature,
                                 spec.divergence, spec.beta, spec.teacher_format, spec.alpha, spec.ignore_index,
                                 spec.scale_t2, compute_grad, row_weight, loss_scale, name)
        else:
            rows = KDRowsFunction.apply(call.student, call.teacher.detach(), call.labels, call.mask, spec,
                                        compute_grad, row_weight, loss_scale, name, grad_inplace)
    if call.reduction == "none":
        return rows.reshape(call.lead_shape)
    return rows.sum()


class KDLoss(torch.nn.Module):
    """`kd_loss` as a module: options fixed at construction, ``forward(student, teacher, labels=None, mask=None)``."""

    def __init__(self, temperature: float = 1.0, divergence: str = "kl", *, beta: float = 0.5,
                 teacher_format: str = "logits", alpha: float = 0.0, ignore_index: int = -100,
                 reduction: str = "batchmean", scale_t2: bool = True, backend: str = "auto"):
        super().__init__()
        self.options = dict(temperature=temperature, divergence=divergence, beta=beta,
                            teacher_format=teacher_format, alpha=alpha, ignore_index=ignore_index,
                            reduction=reduction, scale_t2=scale_t2, backend=backend)
        # Fail at construction, not at the first batch.
        probe = torch.zeros(1, 2)
        kd_loss(probe, probe, labels=torch.zeros(1, dtype=torch.long) if alpha > 0 else None,
                **{**self.options, "backend": "torch"})
        if backend not in ("auto", "torch"):
            select_backend(backend, torch.device("cuda" if backend in ("triton", "cuda") else "cpu"), torch.float32)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                labels: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                normalizer: Optional[Union[float, torch.Tensor]] = None) -> torch.Tensor:
        return kd_loss(student_logits, teacher_logits, labels=labels, mask=mask, normalizer=normalizer,
                       **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
