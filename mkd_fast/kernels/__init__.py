"""Kernel modules, one per compiled backend.  Each exposes the same two functions:

``kd_rows(student[N,C], teacher[K,N,C], labels, mask, spec, compute_grad) -> (loss_rows[N], grad[N,C])``
``scale_rows(grad[N,C], row_scale[N], out=None) -> grad * row_scale[:, None]``
"""
import importlib

_MODULES = {"cpu": "mkd_fast.kernels.cpu", "triton": "mkd_fast.kernels.triton_kd", "cuda": "mkd_fast.kernels.cuda"}


def kernel_module(backend: str):
    """The kernel module of a compiled backend ("cpu", "triton" or "cuda"), imported on first use."""
    return importlib.import_module(_MODULES[backend])
