"""Benchmark configuration: shapes per device, and machine facts stamped into pytest-benchmark's JSON."""
import os
import platform
import subprocess

import pytest
import torch

DEVICE = os.environ.get("MKD_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")

# (N, C) from the issue; the CPU list drops the multi-GB shapes that do not fit a 2-core machine's budget.
GPU_SHAPES = [(4096, 2), (8192, 30522), (8192, 32000), (4096, 128256), (2048, 262144)]
CPU_SHAPES = [(4096, 2), (512, 32000), (128, 128256), (64, 262144)]
SHAPES = GPU_SHAPES if DEVICE == "cuda" else CPU_SHAPES
DTYPES = [torch.float32, torch.bfloat16]


def _commit():
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], text=True,
                                       cwd=os.path.dirname(__file__)).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pytest_benchmark_update_machine_info(config, machine_info):
    import mkd_fast

    machine_info["torch"] = torch.__version__
    machine_info["mkd_fast"] = mkd_fast.__version__
    machine_info["commit"] = _commit()
    machine_info["threads"] = torch.get_num_threads()
    cpu_name = machine_info.get("cpu", {}).get("brand_raw") or platform.processor() or "cpu"
    machine_info["device"] = torch.cuda.get_device_name() if DEVICE == "cuda" else cpu_name
    try:
        import triton

        machine_info["triton"] = triton.__version__
    except ImportError:
        pass


@pytest.fixture
def device():
    return DEVICE
