"""Triton and CUDA backends on a real GPU against float64 gold values (skipped where no GPU is visible).

CI has no GPU: there the Triton kernels are tested in the interpreter (test_triton_backend.py) and the CUDA
sources are compile-checked (`make check-cuda`).  benchmarks/run_gpu.py runs this file on a GPU machine.
"""
import itertools

import pytest
import torch

import mkd_fast
from kd_oracle import assert_matches_gold, make_inputs, make_labels, make_mask

GPU_BACKENDS = [name for name in ("triton", "cuda")
                if torch.cuda.is_available() and mkd_fast.backends()[name].available]
if not GPU_BACKENDS:
    pytest.skip("no CUDA GPU with a compiled GPU backend (Triton is tested in the interpreter by "
                "test_triton_backend.py, CUDA sources by `make check-cuda`)", allow_module_level=True)
pytestmark = pytest.mark.gpu
BACKENDS = GPU_BACKENDS
DIVERGENCES = ["kl", "reverse_kl", "jsd", "ce", "mse"]


def _cuda(*tensors):
    return [None if t is None else t.cuda() for t in tensors]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("divergence,teacher_format,n_teachers,reduction", [
    (d, f, k, r) for d, f, k, r in itertools.product(DIVERGENCES, ["logits", "logprobs", "probs"], [1, 2, 4],
                                                     ["none", "sum", "batchmean"])
    if not (d == "mse" and f == "probs")])
def test_option_grid(backend, divergence, teacher_format, n_teachers, reduction):
    lead = (3, 5)
    s, t = make_inputs(lead, 17, n_teachers, teacher_format=teacher_format, neg_inf=True, seed=n_teachers)
    s, t, labels, mask = _cuda(s, t, make_labels(lead, 17), make_mask(lead))
    assert_matches_gold(backend, s, t, divergence=divergence, teacher_format=teacher_format, temperature=2.0,
                        labels=labels, alpha=0.3, mask=mask, reduction=reduction, beta=0.3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_classes", [1, 2, 3, 17, 4097, 32000, 50257, 262144])
@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_class_sizes_and_dtypes(backend, n_classes, divergence, dtype):
    s, t = make_inputs((5,), n_classes, 2, dtype=dtype, neg_inf=n_classes > 3, seed=n_classes)
    s, t, labels = _cuda(s, t, make_labels((5,), n_classes))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-4)
    assert_matches_gold(backend, s, t, divergence=divergence, temperature=2.0, labels=labels, alpha=0.25, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [0.05, 1.0, 20.0])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_temperatures(backend, temperature, divergence):
    s, t = _cuda(*make_inputs((7,), 300, 3, neg_inf=True, seed=3))
    assert_matches_gold(backend, s, t, divergence=divergence, temperature=temperature)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_empty_and_all_masked(backend):
    wide = torch.randn(6, 4, 50, device="cuda")
    assert_matches_gold(backend, wide[:, 1::2, :31], torch.randn(2, 6, 2, 31, device="cuda"), divergence="jsd")
    s, t = _cuda(*make_inputs((0,), 9, 1))
    assert_matches_gold(backend, s, t)
    s, t = _cuda(*make_inputs((4,), 9, 1))
    s.requires_grad_(True)
    loss = mkd_fast.kd_loss(s, t, mask=torch.zeros(4, dtype=torch.bool, device="cuda"), backend=backend)
    loss.backward()
    assert float(loss) == 0.0 and torch.count_nonzero(s.grad) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_more_than_2_31_elements(backend):
    """int64 offsets: N * C past 2^31 (bf16 keeps this at ~4.3 GB per tensor)."""
    n, c = 16400, 131072
    s = torch.randn(n, c, device="cuda", dtype=torch.bfloat16)
    t = torch.randn(n, c, device="cuda", dtype=torch.bfloat16)
    s.requires_grad_(True)
    loss = mkd_fast.kd_loss(s, t, reduction="none", backend=backend)
    loss[-1].backward()
    ref = mkd_fast.kd_loss(s[-2:].detach().float(), t[-2:].float(), reduction="none", backend="torch")
    torch.testing.assert_close(loss[-2:].detach(), ref, rtol=1e-4, atol=1e-5)
    assert torch.count_nonzero(s.grad[-1]) > 0 and torch.count_nonzero(s.grad[:-1]) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    s = torch.randn(64, 1000, device="cuda", requires_grad=True)
    t = torch.randn(64, 1000, device="cuda")

    def f(x, y):
        return mkd_fast.kd_loss(x, y, temperature=2.0, backend=backend)

    got = torch.compile(f, fullgraph=True)(s, t)
    (g_got,) = torch.autograd.grad(got, s)
    want = f(s, t)
    (g_want,) = torch.autograd.grad(want, s)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_got, g_want)
