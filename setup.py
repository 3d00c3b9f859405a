"""Builds mkd_fast's compiled extensions.

Always: ``mkd_fast._C`` (CPU kernels, OpenMP threads, ATen vectorisation).
When torch has CUDA and nvcc is found: ``mkd_fast._C_cuda`` (CUDA kernels).

Install with torch already present and *without* build isolation, so the extensions are compiled
against the torch you will run them with (an isolated build would download another torch):

    pip install --no-build-isolation .

Environment switches:
  MKD_FAST_BUILD_CUDA=1|0        force or skip the CUDA extension (default: auto)
  MKD_FAST_CPU_CAPABILITY=auto|avx512|avx2|default   vector ISA of the CPU kernels (default: auto, the
                                 best this build machine supports; the package refuses to use a build
                                 whose ISA the running CPU lacks rather than crash)
  TORCH_CUDA_ARCH_LIST           CUDA architectures (default "8.0;9.0+PTX": A100, H100/H200, PTX for newer)
"""
import os
import platform
import shutil

from setuptools import setup

import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, CUDA_HOME

ROOT = os.path.dirname(os.path.abspath(__file__))

CAPABILITY_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"],
    "default": [],
}


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_capability():
    """The vector ISA to compile the CPU kernels for."""
    wanted = os.environ.get("MKD_FAST_CPU_CAPABILITY", "auto").lower()
    if wanted in CAPABILITY_FLAGS:
        return wanted
    if wanted != "auto":
        raise SystemExit(f"MKD_FAST_CPU_CAPABILITY: expected auto, avx512, avx2 or default, got {wanted!r}")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "default"
    flags = _cpu_flags()
    # The best ISA of the build machine (measured 15-25% faster with AVX-512 than AVX2 on the AMD EPYC
    # development machines); the package refuses a build whose ISA the running CPU lacks.
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "f16c"} <= flags:
        return "avx512"
    if {"avx2", "fma", "f16c"} <= flags:
        return "avx2"
    return "default"


def want_cuda():
    forced = os.environ.get("MKD_FAST_BUILD_CUDA", "auto").lower()
    if forced in ("0", "false", "no"):
        return False
    has_toolkit = torch.version.cuda is not None and (CUDA_HOME is not None or shutil.which("nvcc"))
    if forced in ("1", "true", "yes"):
        if not has_toolkit:
            raise SystemExit("MKD_FAST_BUILD_CUDA=1 but torch has no CUDA or nvcc was not found")
        return True
    return bool(has_toolkit)


def write_build_info(capability):
    """Records the vector ISA in plain Python, so the package can refuse a build the running CPU cannot
    execute *before* importing the extension (whose static initialisers may already use that ISA)."""
    path = os.path.join(ROOT, "mkd_fast", "_build_info.py")
    text = f'"""Written by setup.py."""\nCPU_CAPABILITY = "{capability.upper()}"\n'
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def extensions():
    openmp = ["-fopenmp"] if platform.system() != "Darwin" else []
    capability = cpu_capability()
    write_build_info(capability)
    cxx = ["-O3", *openmp, *CAPABILITY_FLAGS[capability]]
    exts = [
        CppExtension(
            "mkd_fast._C",
            sources=["csrc/cpu/kd_cpu_kernel.cpp", "csrc/cpu/kd_cpu_binding.cpp", "csrc/cpu/lstm_cpu_kernel.cpp",
                     "csrc/cpu/lstm_cpu_binding.cpp"],
            extra_compile_args={"cxx": cxx},
            extra_link_args=openmp,
        )
    ]
    if want_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        exts.append(
            CUDAExtension(
                "mkd_fast._C_cuda",
                sources=["csrc/cuda/kd_cuda_binding.cpp", "csrc/cuda/kd_cuda_kernels.cu",
                         "csrc/cuda/lstm_cuda_binding.cpp", "csrc/cuda/lstm_cuda_kernels.cu"],
                include_dirs=[os.path.join(ROOT, "csrc")],
                extra_compile_args={"cxx": ["-O3"],
                                    "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]},
            )
        )
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
