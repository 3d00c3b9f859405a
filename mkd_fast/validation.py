"""Checks the arguments of `kd_loss` once and brings them into row form for the backends.

Every error names the argument at fault and what was expected, so that a wrong call fails at once
with a readable message instead of producing a silently wrong loss deep inside a kernel.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

from .spec import DIVERGENCES, REDUCTIONS, TEACHER_FORMATS, KDSpec, resolve_jsd_endpoints

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
BACKEND_NAMES = ("auto", "torch", "cpu", "triton", "cuda")


@dataclass
class PreparedCall:
    """A validated call: row-shaped tensors plus options."""

    spec: KDSpec
    student: torch.Tensor  # [N, C], class stride 1
    teacher: torch.Tensor  # [K, N, C], class stride 1
    labels: Optional[torch.Tensor]  # int64 [N]
    mask: Optional[torch.Tensor]  # bool [N]
    lead_shape: Tuple[int, ...]
    reduction: str
    normalizer: Optional[Union[float, torch.Tensor]]


def _check_choice(name: str, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}; got {value!r}")


def _check_unit_interval(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number in [0, 1], got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value}")
    return value


def _check_temperature(value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError("temperature: expected a number, got a tensor with several elements")
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"temperature: expected a finite number > 0, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"temperature: expected a finite number > 0, got {value}")
    return value


def _check_float_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a float32, bfloat16, float16 or float64 tensor, got {t.dtype}")


def _check_row_tensor(name: str, t, lead_shape, device, kind: str):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or None, got {type(t).__name__}")
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} like student_logits, got {t.device}")
    if tuple(t.shape) != tuple(lead_shape):
        raise ValueError(f"{name}: expected shape {tuple(lead_shape)} (student_logits without its class "
                         f"dimension), got {tuple(t.shape)}")
    if kind == "labels" and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
        raise TypeError(f"{name}: expected an integer tensor of class indices, got {t.dtype}")
    if kind == "mask" and t.dtype != torch.bool:
        raise TypeError(f"{name}: expected a bool tensor (True = row counts), got {t.dtype}")


def may_sync() -> bool:
    """Whether a device-to-host check is allowed (not while compiling or capturing a CUDA graph)."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def _check_label_range(labels: torch.Tensor, n_classes: int, ignore_index: int) -> None:
    if labels.numel() == 0 or not may_sync():
        return
    ok = (labels == ignore_index) | ((labels >= 0) & (labels < n_classes))
    if not bool(ok.all()):
        bad = labels[~ok][0].item()
        raise ValueError(f"labels: expected class indices in [0, {n_classes}) or ignore_index={ignore_index}; "
                         f"found {bad}")


def prepare_call(student_logits, teacher_logits, *, temperature, divergence, beta, teacher_format, labels,
                 alpha, ignore_index, mask, reduction, scale_t2, normalizer, backend) -> PreparedCall:
    _check_float_tensor("student_logits", student_logits)
    _check_float_tensor("teacher_logits", teacher_logits)
    _check_choice("divergence", divergence, DIVERGENCES)
    _check_choice("teacher_format", teacher_format, TEACHER_FORMATS)
    _check_choice("reduction", reduction, REDUCTIONS)
    _check_choice("backend", backend, BACKEND_NAMES)
    temperature = _check_temperature(temperature)
    beta = _check_unit_interval("beta", beta)
    alpha = _check_unit_interval("alpha", alpha)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
    if not isinstance(scale_t2, bool):
        raise TypeError(f"scale_t2: expected a bool, got {type(scale_t2).__name__}")
    if divergence == "mse" and teacher_format == "probs":
        raise ValueError("teacher_format: 'probs' cannot be used with divergence='mse' (MSE compares raw "
                         "logits); pass teacher logits or log-probabilities")
    if alpha > 0.0 and labels is None:
        raise ValueError(f"alpha: a hard-label weight alpha={alpha} > 0 needs labels")

    if student_logits.dim() < 1:
        raise ValueError("student_logits: expected shape [..., C] with at least one dimension, got a scalar")
    n_classes = student_logits.shape[-1]
    if n_classes < 1:
        raise ValueError("student_logits: the class dimension (last) must have size >= 1, got 0")
    lead_shape = tuple(student_logits.shape[:-1])
    device = student_logits.device
    if teacher_logits.device != device:
        raise ValueError(f"teacher_logits: expected a tensor on {device} like student_logits, "
                         f"got {teacher_logits.device}")
    if teacher_logits.dim() == student_logits.dim() and teacher_logits.shape == student_logits.shape:
        teacher = teacher_logits.unsqueeze(0)
    elif teacher_logits.dim() == student_logits.dim() + 1 and teacher_logits.shape[1:] == student_logits.shape:
        teacher = teacher_logits
        if teacher.shape[0] < 1:
            raise ValueError("teacher_logits: an ensemble [K, ..., C] needs K >= 1 teachers, got K = 0")
    else:
        raise ValueError(f"teacher_logits: expected shape {tuple(student_logits.shape)} or [K, "
                         f"{', '.join(map(str, student_logits.shape))}] for K teachers, got "
                         f"{tuple(teacher_logits.shape)} (a vocabulary-size mismatch between teacher and "
                         f"student is an error, never truncated silently)")

    if labels is not None:
        _check_row_tensor("labels", labels, lead_shape, device, "labels")
        labels = labels.reshape(-1).to(torch.int64)
        _check_label_range(labels, n_classes, int(ignore_index))
    if mask is not None:
        _check_row_tensor("mask", mask, lead_shape, device, "mask")
        mask = mask.reshape(-1)
    if normalizer is not None:
        if isinstance(normalizer, torch.Tensor):
            if normalizer.numel() != 1:
                raise ValueError("normalizer: expected a number or a one-element tensor")
            if may_sync() and not bool(normalizer > 0):
                raise ValueError(f"normalizer: expected a value > 0, got {float(normalizer)}")
        elif isinstance(normalizer, bool) or not isinstance(normalizer, numbers.Real) or not normalizer > 0:
            raise ValueError(f"normalizer: expected a number > 0 or a one-element tensor, got {normalizer!r}")

    student = student_logits.reshape(-1, n_classes)
    if n_classes > 1 and student.stride(-1) != 1:
        student = student.contiguous()
    teacher = teacher.reshape(teacher.shape[0], -1, n_classes)
    compute_dtype = torch.float64 if student.dtype == torch.float64 else None
    if compute_dtype is not None and teacher.dtype != torch.float64:
        teacher = teacher.to(torch.float64)
    elif compute_dtype is None and teacher.dtype == torch.float64:
        teacher = teacher.to(torch.float32)
    if n_classes > 1 and teacher.stride(-1) != 1:
        teacher = teacher.contiguous()

    spec = KDSpec(temperature=temperature, divergence=resolve_jsd_endpoints(divergence, beta), beta=beta,
                  teacher_format=teacher_format, alpha=alpha, ignore_index=int(ignore_index), scale_t2=scale_t2)
    return PreparedCall(spec=spec, student=student, teacher=teacher, labels=labels, mask=mask,
                        lead_shape=lead_shape, reduction=reduction, normalizer=normalizer)
