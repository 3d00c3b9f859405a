"""`torch.library` custom ops around the compiled kernels.

Registered with fake (meta) kernels and autograd so that `torch.compile(fullgraph=True)` traces
straight through `kd_loss`.  The forward kernel returns the per-row loss *and* the per-row gradient
w.r.t. the student; backward only scales that gradient by the incoming per-row gradient, so a
forward+backward costs one fused pass plus one elementwise scale.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .kernels import kernel_module
from .spec import KDSpec
from .validation import may_sync


def _loss_dtype(student: torch.Tensor) -> torch.dtype:
    return torch.float64 if student.dtype == torch.float64 else torch.float32


@torch.library.custom_op("mkd_fast::kd_rows", mutates_args=())
def kd_rows_op(student: torch.Tensor, teacher: torch.Tensor, labels: Optional[torch.Tensor],
               mask: Optional[torch.Tensor], temperature: float, divergence: str, beta: float,
               teacher_format: str, alpha: float, ignore_index: int, scale_t2: bool, compute_grad: bool,
               row_weight: Optional[torch.Tensor], loss_scale: float, backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weighted per-row loss [N] and, when compute_grad, its gradient w.r.t. the student [N, C].

    Row r is weighted by ``loss_scale * row_weight[r]``; passing the reduction's 1/count here makes the
    backward of a mean free.  Without compute_grad the second output is an empty tensor.
    """
    spec = KDSpec(temperature=temperature, divergence=divergence, beta=beta, teacher_format=teacher_format,
                  alpha=alpha, ignore_index=ignore_index, scale_t2=scale_t2)
    return kernel_module(backend).kd_rows(student, teacher, labels, mask, spec, compute_grad,
                                          row_weight=row_weight, loss_scale=loss_scale)


@kd_rows_op.register_fake
def _kd_rows_fake(student, teacher, labels, mask, temperature, divergence, beta, teacher_format, alpha,
                  ignore_index, scale_t2, compute_grad, row_weight, loss_scale, backend):
    loss = student.new_empty((student.shape[0],), dtype=_loss_dtype(student))
    grad = student.new_empty(tuple(student.shape)) if compute_grad else student.new_empty((0,))
    return loss, grad


@torch.library.custom_op("mkd_fast::scale_rows", mutates_args=())
def scale_rows_op(grad: torch.Tensor, row_scale: torch.Tensor, backend: str) -> torch.Tensor:
    """grad * row_scale[:, None], computed in float32 and stored in grad's dtype."""
    return kernel_module(backend).scale_rows(grad, row_scale)


@scale_rows_op.register_fake
def _scale_rows_fake(grad, row_scale, backend):
    return torch.empty_like(grad)


def _setup_context(ctx, inputs, output):
    # The second output (the saved gradient) never receives a gradient: without this, autograd would
    # fill an [N, C] tensor of zeros for it on every backward.
    ctx.set_materialize_grads(False)
    ctx.backend = inputs[-1]
    ctx.compute_grad = inputs[-2]
    ctx.save_for_backward(output[1])


def _is_all_ones(grad_loss: torch.Tensor) -> bool:
    """True when every row's incoming gradient is exactly 1 (checked only where a host read is allowed)."""
    if not may_sync() or grad_loss.numel() == 0:
        return False
    probe = grad_loss[:1] if grad_loss.stride(0) == 0 else grad_loss  # an expanded scalar: one value says all
    return bool((probe == 1).all())


def _student_grad(ctx, grad_loss, scale):
    """d loss / d student from the forward's saved per-row gradient and the incoming per-row gradient."""
    if not ctx.compute_grad:
        raise RuntimeError("kd_loss: the forward ran without a student gradient (student_logits did not "
                           "require grad then); call it again with grad enabled")
    if grad_loss is None:  # the loss output took no part in what is being differentiated
        return None
    if getattr(ctx, "grad_handed_out", False):
        raise RuntimeError("kd_loss: a second backward through the same loss (retain_graph=True) is not "
                           "supported by the fused backends: the first backward handed out their saved "
                           "gradient buffer, which may have changed since.  Compute the loss again, or use "
                           "backend='torch'.")
    (row_grad,) = ctx.saved_tensors
    if _is_all_ones(grad_loss):
        # loss.backward() of a reduced loss: nothing to scale, so the forward's buffer *is* the gradient
        # (no copy).  It may be modified by whoever receives it, hence no second backward.
        ctx.grad_handed_out = True
        return row_grad
    return scale(row_grad, grad_loss.to(_loss_dtype(row_grad)))


def _backward(ctx, grad_loss, _unused_grad_of_grad):
    grad = _student_grad(ctx, grad_loss, lambda g, w: scale_rows_op(g, w, ctx.backend))
    return (grad,) + (None,) * 14


torch.library.register_autograd("mkd_fast::kd_rows", _backward, setup_context=_setup_context)


class KDRowsFunction(torch.autograd.Function):
    """The same computation for eager mode, without the custom-op dispatch (measured about 10% less time
    per call on a tiny 32 x 2 batch: the Python layer dominates there).  `kd_loss` uses the custom op
    while torch.compile traces and this function otherwise."""

    @staticmethod
    def forward(ctx, student, teacher, labels, mask, spec: KDSpec, compute_grad: bool, row_weight, loss_scale: float,
                backend: str, grad_inplace: bool = False):
        extra = {"grad_out": student} if grad_inplace and compute_grad else {}
        loss, grad = kernel_module(backend).kd_rows(student, teacher, labels, mask, spec, compute_grad,
                                                    row_weight=row_weight, loss_scale=loss_scale, **extra)
        if extra:
            # The logits now hold the gradient: bump their version so autograd refuses any other use of
            # them that it saved for backward (instead of silently computing with the gradient).
            torch.autograd.graph.increment_version(student)
        ctx.set_materialize_grads(False)
        ctx.backend = backend
        ctx.compute_grad = compute_grad
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable  # hand-derived gradient: no double backward
    def backward(ctx, grad_loss):
        grad = _student_grad(ctx, grad_loss, lambda g, w: kernel_module(ctx.backend).scale_rows(g, w))
        return (grad,) + (None,) * 9
