"""CPU C++ kernels (the ``mkd_fast._C`` extension)."""
from typing import Optional

import torch

from ..spec import KDSpec


def kd_rows(student: torch.Tensor, teacher: torch.Tensor, labels: Optional[torch.Tensor],
            mask: Optional[torch.Tensor], spec: KDSpec, compute_grad: bool,
            row_weight: Optional[torch.Tensor] = None, loss_scale: float = 1.0,
            grad_out: Optional[torch.Tensor] = None):
    from .. import _C

    return _C.kd_rows(student, teacher, labels, mask, spec.temperature, spec.divergence_code, spec.beta,
                      spec.format_code, spec.alpha, spec.ignore_index, spec.scale_t2, compute_grad, row_weight,
                      loss_scale, grad_out)


def scale_rows(grad: torch.Tensor, row_scale: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    from .. import _C

    return _C.scale_rows(grad, row_scale, out)
