"""`mkd-fast loss-demo`: what the fused losses give you, on this machine, in under a minute or two.

Lists the backends, checks every available backend against the float64 reference, then times
forward+backward of the KD loss against eager PyTorch and torch.compile, side by side in one run.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, List

import torch

from .backends import backends
from .baselines import compiled_kl, eager_kl
from .losses import kd_loss


def _time_fwd_bwd(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], student, teacher, repeats: int) -> float:
    """Median seconds of forward + backward."""
    times = []
    for i in range(repeats + 1):
        s = student.detach().requires_grad_(True)
        start = time.perf_counter()
        fn(s, teacher).backward()
        if i:  # the first call warms up (allocator, compilation)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _correctness_rows(names: List[str]) -> List[str]:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(64, 1000, generator=g, dtype=torch.float64) * 3
    teachers = torch.randn(2, 64, 1000, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 1000, (64,), generator=g)
    rows = []
    for divergence in ("kl", "reverse_kl", "jsd", "ce", "mse"):
        opts = dict(temperature=2.0, divergence=divergence, labels=labels, alpha=0.2)
        s64 = student.clone().requires_grad_(True)
        gold = kd_loss(s64, teachers, backend="torch", **opts)
        gold.backward()
        for name in names:
            if name == "torch":
                continue
            s = student.float().requires_grad_(True)
            loss = kd_loss(s, teachers.float(), backend=name, **opts)
            loss.backward()
            err_l = abs(float(loss.detach()) - float(gold.detach()))
            err_g = float((s.grad.double() - s64.grad).abs().max())
            rows.append(f"  {name:<7} {divergence:<11} loss {float(loss.detach()):10.6f}  |loss err| {err_l:.1e}  "
                        f"max|grad err| {err_g:.1e}")
    return rows


def run_demo(repeats: int = 5, use_compile: bool = True, threads: int = 0) -> None:
    if threads:
        torch.set_num_threads(threads)
    print(f"mkd_fast loss demo: torch {torch.__version__}, {torch.get_num_threads()} CPU threads\n")
    print("Backends:")
    status = backends()
    for name, st in status.items():
        print(f"  {name:<7} {'yes' if st.available else 'no ':<4} {st.reason}")
    cpu_names = [n for n, st in status.items() if st.available and "cpu" in st.devices and n != "triton"]

    print("\nCorrectness against the float64 reference (float32 inputs, 64 x 1000, 2 teachers, T=2, alpha=0.2):")
    for line in _correctness_rows(cpu_names):
        print(line)

    print("\nForward + backward, KL at T=2, float32, median of", repeats, "runs (ms):")
    header = f"  {'N x C':>14} {'eager':>9} {'compile':>9} {'mkd_fast':>9} {'vs eager':>9} {'vs compile':>10}"
    print(header)
    best = "cpu" if status["cpu"].available else "torch"
    for n, c in ((4096, 2), (2048, 3), (512, 32000)):
        g = torch.Generator().manual_seed(1)
        student, teacher = torch.randn(n, c, generator=g), torch.randn(n, c, generator=g)
        t_eager = _time_fwd_bwd(lambda s, t: eager_kl(s, t, 2.0), student, teacher, repeats)
        t_comp = _time_fwd_bwd(lambda s, t: compiled_kl(s, t, 2.0), student, teacher, repeats) if use_compile else float("nan")
        t_ours = _time_fwd_bwd(lambda s, t: kd_loss(s, t, temperature=2.0, backend=best), student, teacher, repeats)
        print(f"  {f'{n} x {c}':>14} {t_eager * 1e3:9.2f} {t_comp * 1e3:9.2f} {t_ours * 1e3:9.2f} "
              f"{t_eager / t_ours:8.1f}x {t_comp / t_ours:9.1f}x")
    print(f"\n(mkd_fast backend: {best}.  Full benchmarks: make bench, see benchmarks/README.md.)")
