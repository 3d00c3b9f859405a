"""Forward+backward time of the KD loss: mkd_fast backends vs eager PyTorch, torch.compile and Liger.

Run: ``make bench`` (CPU) or ``python benchmarks/run_gpu.py`` (GPU, also records bandwidth and memory).
Each (shape, dtype) is one pytest-benchmark group, so implementations are compared side by side in one
run; ``benchmarks/summarize.py`` turns the JSON into ratio tables and a PNG.
"""
import pytest
import torch

import mkd_fast
from mkd_fast.baselines import compiled_kl, eager_kl

from conftest import DEVICE, DTYPES, SHAPES

TEMPERATURE = 2.0


def _liger_kl():
    try:
        from liger_kernel.transformers import LigerKLDIVLoss
    except ImportError:
        return None
    loss = LigerKLDIVLoss(reduction="batchmean", log_target=True)

    def fn(student, teacher):
        # Liger's KL kernel takes log-probabilities: the softmaxes run in PyTorch first.
        log_ps = torch.log_softmax(student.float() / TEMPERATURE, dim=-1)
        log_pt = torch.log_softmax(teacher.float() / TEMPERATURE, dim=-1)
        return loss(log_ps, log_pt) * TEMPERATURE**2

    return fn


def _implementations():
    impls = {"eager": lambda s, t: eager_kl(s, t, TEMPERATURE),
             "compile": lambda s, t: compiled_kl(s, t, TEMPERATURE)}
    for name, status in mkd_fast.backends().items():
        if name != "torch" and status.available and DEVICE in status.devices:
            impls[f"mkd_fast_{name}"] = (lambda b: lambda s, t: mkd_fast.kd_loss(s, t, temperature=TEMPERATURE,
                                                                                 backend=b))(name)
    if DEVICE == "cuda" and _liger_kl() is not None:
        impls["liger"] = _liger_kl()
    return impls


IMPLS = _implementations()


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_kd_forward_backward(benchmark, impl, dtype, shape):
    n, c = shape
    g = torch.Generator(device=DEVICE).manual_seed(0)
    student = torch.randn(n, c, device=DEVICE, dtype=dtype, generator=g).requires_grad_(True)
    teacher = torch.randn(n, c, device=DEVICE, dtype=dtype, generator=g)
    fn = IMPLS[impl]
    benchmark.group = f"kd fwd+bwd {n}x{c} {str(dtype).replace('torch.', '')}"
    benchmark.extra_info.update(n=n, c=c, dtype=str(dtype), impl=impl, device=DEVICE,
                                bytes_min=3 * n * c * student.element_size())

    def step():
        student.grad = None
        fn(student, teacher).backward()
        _sync()

    step()  # warm-up: compilation, autotuning, allocator
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        benchmark.extra_info["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
    rounds = 20 if DEVICE == "cuda" else (3 if n * c >= 8_000_000 else 10)
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)
