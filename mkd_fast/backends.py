"""Which loss backends this installation can run, why not when it cannot, and the `auto` choice."""
from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from typing import Dict

import torch

_ISA_FLAGS = {"DEFAULT": set(), "AVX2": {"avx2", "fma", "f16c"},
              "AVX512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "f16c"}}


def _cpu_runs(isa: str) -> bool:
    """Whether this CPU can run code built for `isa` (from /proc/cpuinfo; torch's view elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is not None:
        return _ISA_FLAGS.get(isa, set()) <= flags
    rank = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}
    return rank.get(isa, 0) <= rank.get(torch.backends.cpu.get_cpu_capability(), 0)


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    devices: str  # "cpu", "cuda" or "cpu, cuda"
    reason: str  # why it is unavailable, or a short description when available


def _triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _isa_refusal(isa: str) -> BackendStatus:
    return BackendStatus("cpu", False, "cpu", f"mkd_fast._C was compiled for {isa}, which this CPU lacks; "
                         "rebuild here (or with MKD_FAST_CPU_CAPABILITY=default)")


@functools.lru_cache(maxsize=None)
def _cpu_status() -> BackendStatus:
    try:
        from ._build_info import CPU_CAPABILITY
    except ImportError:  # built without setup.py's record: checked after the import instead
        CPU_CAPABILITY = None
    if CPU_CAPABILITY is not None and not _cpu_runs(CPU_CAPABILITY):  # before the import: no SIGILL
        return _isa_refusal(CPU_CAPABILITY)
    try:
        ext = importlib.import_module("mkd_fast._C")
    except ImportError as exc:
        return BackendStatus("cpu", False, "cpu", f"the C++ extension mkd_fast._C is not compiled ({exc}); "
                             "reinstall with `pip install --no-build-isolation .` and a C++ compiler")
    built = ext.compiled_capability()
    if not _cpu_runs(built):
        return _isa_refusal(built)
    return BackendStatus("cpu", True, "cpu", f"C++ kernels, {built} vectors, {torch.get_num_threads()} threads")


@functools.lru_cache(maxsize=None)
def _triton_status() -> BackendStatus:
    try:
        import triton  # noqa: F401
    except ImportError:
        return BackendStatus("triton", False, "cuda", "triton is not installed (pip install triton)")
    if _triton_interpreter():
        return BackendStatus("triton", True, "cpu, cuda", f"triton {triton.__version__} (interpreter: "
                             "TRITON_INTERPRET=1, slow, for tests)")
    if not torch.cuda.is_available():
        return BackendStatus("triton", False, "cuda", "no CUDA GPU is visible (on CPU only with TRITON_INTERPRET=1)")
    return BackendStatus("triton", True, "cuda", f"triton {triton.__version__}")


@functools.lru_cache(maxsize=None)
def _cuda_status() -> BackendStatus:
    if torch.version.cuda is None:
        return BackendStatus("cuda", False, "cuda", "this torch build has no CUDA")
    try:
        importlib.import_module("mkd_fast._C_cuda")
    except ImportError as exc:
        return BackendStatus("cuda", False, "cuda", f"the CUDA extension mkd_fast._C_cuda is not compiled ({exc}); "
                             "reinstall with nvcc on PATH (MKD_FAST_BUILD_CUDA=1 to insist)")
    if not torch.cuda.is_available():
        return BackendStatus("cuda", False, "cuda", "no CUDA GPU is visible")
    return BackendStatus("cuda", True, "cuda", f"CUDA C++ kernels (CUDA {torch.version.cuda})")


def backends() -> Dict[str, BackendStatus]:
    """Every backend with its availability and, when missing, the reason."""
    torch_status = BackendStatus("torch", True, "cpu, cuda", "pure PyTorch reference (the test oracle)")
    return {"torch": torch_status, "cpu": _cpu_status(), "triton": _triton_status(), "cuda": _cuda_status()}


# `auto` preference per device type, fastest first.
_AUTO_ORDER = {"cpu": ("cpu", "torch"), "cuda": ("triton", "cuda", "torch")}


def select_backend(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    """Resolve `backend=` for tensors on `device`; raises with a how-to when the choice cannot run."""
    return _select(requested, device.type, dtype == torch.float64)


@torch.compiler.assume_constant_result
def _select(requested: str, device_type: str, is_float64: bool) -> str:
    # A constant for torch.compile: evaluated once while tracing (it imports modules, which dynamo must
    # not trace), never a graph break.
    if requested == "auto":
        for name in _AUTO_ORDER.get(device_type, ("torch",)):
            if name == "torch":
                return name
            if is_float64 and name in ("triton", "cuda"):
                continue  # the GPU kernels compute in float32: float64 goes to the reference
            status = backends()[name]
            if status.available and device_type in status.devices:
                return name
        return "torch"
    if requested == "torch":
        return requested
    status = backends()[requested]
    if not status.available:
        raise RuntimeError(f"backend: {requested!r} is unavailable: {status.reason}")
    if device_type not in status.devices:
        raise RuntimeError(f"backend: {requested!r} runs on {status.devices} tensors, got {device_type} tensors")
    if is_float64 and requested in ("triton", "cuda"):
        raise TypeError(f"student_logits: backend {requested!r} supports float32, bfloat16 and float16; "
                        "use backend='torch' or 'cpu' for float64")
    return requested
