"""CUDA C++ kernels (the ``mkd_fast._C_cuda`` extension, csrc/cuda/).

Both functions launch on torch's current CUDA stream of the tensors' device, so they order correctly
with the surrounding PyTorch work (the stream travels to C++ as an int).
"""
from typing import Optional

import torch

from ..spec import KDSpec


def _class_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The kernels read rows with stride 1 along the classes; anything else is copied once."""
    return t if t.size(-1) <= 1 or t.stride(-1) == 1 else t.contiguous()


def kd_rows(student: torch.Tensor, teacher: torch.Tensor, labels: Optional[torch.Tensor],
            mask: Optional[torch.Tensor], spec: KDSpec, compute_grad: bool,
            row_weight: Optional[torch.Tensor] = None, loss_scale: float = 1.0):
    """(loss_rows float32 [N], grad [N, C] in the student's dtype, or an empty tensor without compute_grad)."""
    from .. import _C_cuda

    stream = torch.cuda.current_stream(student.device).cuda_stream
    return _C_cuda.kd_rows(_class_contiguous(student), _class_contiguous(teacher), labels, mask,
                           float(spec.temperature), int(spec.divergence_code), float(spec.beta),
                           int(spec.format_code), float(spec.alpha), int(spec.ignore_index), bool(spec.scale_t2),
                           bool(compute_grad), int(stream), row_weight=row_weight, loss_scale=float(loss_scale))


def scale_rows(grad: torch.Tensor, row_scale: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """grad * row_scale[:, None], computed in float32 and stored in grad's dtype (into ``out`` when given)."""
    from .. import _C_cuda

    stream = torch.cuda.current_stream(grad.device).cuda_stream
    return _C_cuda.scale_rows(_class_contiguous(grad), row_scale, out, int(stream))
