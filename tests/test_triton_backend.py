"""Triton backend (mkd_fast.kernels.triton_kd) against the PyTorch reference, on CPU through the
Triton interpreter.

The reference's gradient is taken with autograd on a float64 copy of the inputs, so it is independent
of the kernels' hand-derived gradients.  Shapes are small: the interpreter runs every program in Python.
"""
import os

import pytest
import torch

if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("a GPU is visible: the Triton kernels are tested on it by test_gpu_backends.py",
                allow_module_level=True)
os.environ["TRITON_INTERPRET"] = "1"  # before triton (and the kernels) are imported

import dataclasses  # noqa: E402
import importlib  # noqa: E402

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from mkd_fast.reference import kd_rows_reference  # noqa: E402
from mkd_fast.spec import KDSpec  # noqa: E402
import mkd_fast.kernels.triton_kd as tk  # noqa: E402

try:  # if some other module imported the kernels before the interpreter was switched on
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(tk._kd_tile_kernel, InterpretedFunction):
        tk = importlib.reload(tk)
except ImportError:  # pragma: no cover
    pass

# numpy warns about log(0) / inf - inf inside the interpreter; those values are guarded by design.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

DIVERGENCES = ["kl", "ce", "reverse_kl", "jsd", "mse"]
FORMATS = ["logits", "logprobs", "probs"]
NEG_INF = float("-inf")


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def make_inputs(n, c, k, fmt="logits", dtype=torch.float32, teacher_dtype=None, pad_from=None,
                seed=0, scale=2.0):
    """student [n, c], teacher [k, n, c] in the given format; classes >= pad_from are -inf logits
    (probability 0) in student and teachers, as in a padded vocabulary."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    t = torch.randn(k, n, c, generator=g, dtype=torch.float64) * scale
    if pad_from is not None:
        s[:, pad_from:] = NEG_INF
        t[:, :, pad_from:] = NEG_INF
    if fmt == "probs":
        t = torch.softmax(t, dim=-1)
    elif fmt == "logprobs":
        t = torch.log_softmax(t, dim=-1)
    return s.to(dtype), t.to(teacher_dtype or dtype)


def _autograd_reference(s64, t64, labels, mask, spec):
    s64 = s64.detach().requires_grad_(True)
    loss = kd_rows_reference(s64, t64, labels, mask, spec)
    if loss.requires_grad:
        (grad,) = torch.autograd.grad(loss.sum(), s64)
    else:
        grad = torch.zeros_like(s64)
    return loss.detach(), grad


def reference(student, teacher, labels, mask, spec):
    """(loss [N], grad [N, C]) in float64 from the autograd reference on the *same* (rounded) inputs."""
    s64 = student.detach().to(torch.float64)
    t64 = teacher.detach().to(torch.float64)
    if spec.divergence != "mse":
        return _autograd_reference(s64, t64, labels, mask, spec)
    if spec.teacher_format == "probs":
        # The backend follows the documented semantics: teacher values u = log(t) for probabilities,
        # also for the MSE target.  reference.py regresses on the raw probabilities instead (reported
        # as a suspected bug); log(t) passed as "logprobs" is the documented meaning.
        t64 = t64.log()
        spec = dataclasses.replace(spec, teacher_format="logprobs")
    # reference.py's MSE gradient is NaN at skipped classes (-inf target) where the student is -inf
    # too (its where() comes after the product; reported).  The soft term does not depend on skipped
    # classes, so take its gradient with those student entries set to 0, and the hard term apart.
    alpha = spec.alpha if labels is not None else 0.0
    skipped = ~torch.isfinite(t64.mean(dim=0))
    loss_soft, grad_soft = _autograd_reference(torch.where(skipped, 0.0, s64), t64, labels, mask,
                                               dataclasses.replace(spec, alpha=0.0))
    if alpha == 0.0:
        return loss_soft, grad_soft
    loss_hard, grad_hard = _autograd_reference(s64, t64, labels, mask,
                                               dataclasses.replace(spec, alpha=1.0))
    if alpha == 1.0:
        return loss_hard, grad_hard
    return (alpha * loss_hard + (1 - alpha) * loss_soft, alpha * grad_hard + (1 - alpha) * grad_soft)


def assert_close_rows(loss, grad, ref_loss, ref_grad, spec, low_precision=False):
    """float32: ~1e-5 relative / 1e-6 absolute, the absolute part scaled by the factor the soft term
    is multiplied by (T^2, and T for the gradient), since float32 rounding of the log-normalisers is
    amplified by it; bf16 / fp16 gradients: 1e-2 relative (they are stored in that dtype)."""
    assert loss.dtype == torch.float32
    loss64 = loss.to(torch.float64)
    grad64 = grad.to(torch.float64)
    assert torch.equal(torch.isnan(loss64), torch.isnan(ref_loss))
    assert torch.equal(torch.isinf(loss64), torch.isinf(ref_loss))
    soft_scale = spec.soft_scale
    grad_scale = 1.0 if spec.divergence == "mse" else soft_scale / spec.temperature
    row_max = ref_grad.abs().amax(dim=1, keepdim=True) if ref_grad.numel() else ref_grad
    if low_precision:
        rtol_l, atol_l, rtol_g, atol_g = 1e-4, 1e-5 * max(1.0, soft_scale), 1e-2, 2e-3 * row_max + 1e-6
    else:
        rtol_l, atol_l, rtol_g = 1e-5, 1e-6 * max(1.0, soft_scale), 1e-5
        atol_g = 1e-6 * torch.clamp(row_max, min=max(1.0, grad_scale))
    fin = torch.isfinite(ref_loss)
    err_l = (loss64 - ref_loss)[fin].abs()
    tol_l = atol_l + rtol_l * ref_loss[fin].abs()
    assert bool((err_l <= tol_l).all()), f"loss: max err {err_l.max():.3e}\n{loss}\n{ref_loss}"
    assert torch.isfinite(ref_grad).all(), "reference gradient is not finite: bad test input"
    err_g = (grad64 - ref_grad).abs()
    tol_g = atol_g + rtol_g * ref_grad.abs()
    bad = ~(err_g <= tol_g)
    assert not bool(bad.any()), (f"grad: {int(bad.sum())} elements off, max err {err_g.max():.3e}, "
                                 f"max |ref| {ref_grad.abs().max():.3e}")


def run_and_check(student, teacher, labels, mask, spec, low_precision=False):
    loss, grad = tk.kd_rows(student, teacher, labels, mask, spec, True)
    n, c = student.shape
    assert loss.shape == (n,) and grad.shape == (n, c)
    assert grad.dtype == student.dtype and grad.is_contiguous()
    ref_loss, ref_grad = reference(student, teacher, labels, mask, spec)
    assert_close_rows(loss, grad, ref_loss, ref_grad, spec, low_precision)
    return loss, grad


@pytest.fixture
def loop_path(monkeypatch):
    """Shrink the tiles so that modest C goes through the looping (large-C) kernel in several tiles."""
    monkeypatch.setattr(tk, "MAX_SINGLE_TILE", 4)
    monkeypatch.setattr(tk, "LOOP_TILE", 160)  # K = 1: 64-class tiles, K = 2, 3: 32-class tiles


def labels_for(n, c, seed=1, ignore_rows=(1,)):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    for r in ignore_rows:
        if r < n:
            labels[r] = -100
    return labels


# ------------------------------------------------------------------------------------------------
# configuration heuristic
# ------------------------------------------------------------------------------------------------
def test_config_heuristic():
    small = tk._kd_config(10_000, 2, 1)
    assert small["path"] == "tile" and small["BLOCK_R"] > 1
    assert tk._kd_config(10_000, 64, 1)["BLOCK_R"] > 1
    assert tk._kd_config(3, 64, 1)["BLOCK_R"] == 4  # never more rows than needed
    for c in (2, 17, 130, 1000, 4096, 4097, 32000, 131072, 262144):
        for k in (1, 2, 3, 8):
            cfg = tk._kd_config(100, c, k)
            kp = tk._next_pow2(k)
            assert cfg["num_warps"] in (1, 2, 4, 8, 16)
            held = cfg["BLOCK_R"] * (kp + 1) * cfg["BLOCK_C"]
            assert held <= max(tk.MAX_SINGLE_TILE, tk.ROWS_TARGET, tk.LOOP_TILE)
            if cfg["path"] == "tile":
                assert cfg["BLOCK_C"] >= c
    assert tk._kd_config(100, 262144, 1)["path"] == "loop"


# ------------------------------------------------------------------------------------------------
# semantics: every divergence x format x number of teachers, both paths
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_divergence_format_teachers(divergence, fmt, k):
    s, t = make_inputs(6, 17, k, fmt, seed=k)
    spec = KDSpec(temperature=2.0, divergence=divergence, teacher_format=fmt)
    run_and_check(s, t, None, None, spec)


@pytest.mark.parametrize("temperature", [0.05, 1.0, 20.0])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_temperatures(divergence, temperature):
    s, t = make_inputs(5, 130, 2, seed=3)
    spec = KDSpec(temperature=temperature, divergence=divergence, beta=0.3)
    run_and_check(s, t, None, None, spec)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_loop_path(loop_path, divergence, k):
    fmt = FORMATS[k - 1]
    s, t = make_inputs(4, 150, k, fmt, seed=10 + k)
    assert tk._kd_config(4, 150, k)["path"] == "loop"
    assert tk._kd_config(4, 150, k)["BLOCK_C"] < 150
    labels = labels_for(4, 150)
    spec = KDSpec(temperature=0.7, divergence=divergence, teacher_format=fmt, alpha=0.25)
    run_and_check(s, t, labels, None, spec)


@pytest.mark.parametrize("temperature", [0.05, 20.0])
@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd"])
def test_loop_path_temperatures(loop_path, divergence, temperature):
    s, t = make_inputs(3, 100, 1, seed=7, scale=3.0)
    run_and_check(s, t, None, None, KDSpec(temperature=temperature, divergence=divergence))


@pytest.mark.parametrize("c", [1, 2, 3, 17, 130])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_class_counts(divergence, c):
    s, t = make_inputs(9, c, 2, seed=c)
    labels = labels_for(9, c)
    spec = KDSpec(temperature=1.5, divergence=divergence, alpha=0.3)
    run_and_check(s, t, labels, None, spec)


# ------------------------------------------------------------------------------------------------
# labels / alpha / masks
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_loop", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_labels_alpha(request, divergence, alpha, use_loop):
    if use_loop:
        request.getfixturevalue("loop_path")
    n, c = 6, 70
    s, t = make_inputs(n, c, 2, seed=4)
    labels = labels_for(n, c, ignore_rows=(1, 4))
    # ignored rows may hold anything: it must not leak
    s[1] = float("nan")
    t[:, 4] = NEG_INF
    spec = KDSpec(temperature=2.0, divergence=divergence, alpha=alpha)
    loss, grad = run_and_check(s, t, labels, None, spec)
    assert bool((loss[[1, 4]] == 0).all()) and bool((grad[[1, 4]] == 0).all())


def test_alpha_one_ignores_infinite_soft_term():
    # student -inf where the teacher has mass: KL would be +inf, but alpha == 1 skips the soft term
    s, t = make_inputs(4, 20, 1, seed=5)
    s[:, 0] = NEG_INF
    labels = torch.tensor([3, 5, -100, 19])
    for div in ("kl", "mse"):
        loss, grad = run_and_check(s, t, labels, None, KDSpec(divergence=div, alpha=1.0))
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


def test_alpha_one_without_labels_is_zero():
    s, t = make_inputs(3, 10, 1)
    loss, grad = tk.kd_rows(s, t, None, None, KDSpec(alpha=1.0), True)
    assert bool((loss == 0).all()) and bool((grad == 0).all())


@pytest.mark.parametrize("use_loop", [False, True])
@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd", "mse"])
def test_mask(request, divergence, use_loop):
    if use_loop:
        request.getfixturevalue("loop_path")
    n, c = 7, 70
    s, t = make_inputs(n, c, 3, seed=6)
    mask = torch.tensor([True, False, True, True, False, True, True])
    labels = labels_for(n, c, ignore_rows=(2,))
    s[1] = float("nan")
    t[:, 4] = float("nan")
    spec = KDSpec(temperature=1.0, divergence=divergence, alpha=0.5)
    loss, grad = run_and_check(s, t, labels, mask, spec)
    assert bool((loss[[1, 2, 4]] == 0).all()) and bool((grad[[1, 2, 4]] == 0).all())
    # all rows masked
    none = torch.zeros(n, dtype=torch.bool)
    loss, grad = run_and_check(s, t, labels, none, spec)
    assert bool((loss == 0).all()) and bool((grad == 0).all())


# ------------------------------------------------------------------------------------------------
# -inf (padded vocabulary), edge sizes, layouts, dtypes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_loop", [False, True])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_padded_vocabulary(request, divergence, k, use_loop):
    if use_loop:
        request.getfixturevalue("loop_path")
    n, c = 4, 150
    fmt = "probs" if k == 3 else "logits"
    s, t = make_inputs(n, c, k, fmt, pad_from=100, seed=8)
    # also a whole leading tile of -inf (first online tile sees only -inf) and scattered -inf
    s[:, :40] = NEG_INF
    t[:, :, :40] = 0.0 if fmt == "probs" else NEG_INF
    s[:, 77] = NEG_INF
    t[:, :, 77] = 0.0 if fmt == "probs" else NEG_INF
    if fmt == "probs":
        t = t / t.sum(-1, keepdim=True)
    labels = labels_for(n, 60, ignore_rows=(2,)) + 40
    labels[2] = -100
    for temperature in (0.05, 1.0):
        spec = KDSpec(temperature=temperature, divergence=divergence, teacher_format=fmt, alpha=0.2)
        loss, grad = run_and_check(s, t, labels, None, spec)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert bool((grad[:, 100:] == 0).all()) and bool((grad[:, :40] == 0).all())


def test_empty_rows():
    s, t = make_inputs(0, 17, 2)
    for compute_grad in (True, False):
        loss, grad = tk.kd_rows(s, t, None, None, KDSpec(), compute_grad)
        assert loss.shape == (0,) and loss.dtype == torch.float32
        assert grad.shape == ((0, 17) if compute_grad else (0,))
    out = tk.scale_rows(torch.empty(0, 5), torch.empty(0))
    assert out.shape == (0, 5)


@pytest.mark.parametrize("use_loop", [False, True])
def test_noncontiguous_rows(request, use_loop):
    if use_loop:
        request.getfixturevalue("loop_path")
    n, c, k = 5, 70, 2
    big_s, big_t = make_inputs(n, 2 * c + 3, k, seed=9)
    s = big_s[:, 3:3 + c]  # row stride 2c + 3
    t = make_inputs(n, c, k, seed=10)[1].permute(1, 0, 2).contiguous().permute(1, 0, 2)  # [K,N,C], N-major
    assert s.stride() == (2 * c + 3, 1) and t.stride() == (c, k * c, 1)
    labels = labels_for(n, c)
    for div in ("kl", "jsd"):
        spec = KDSpec(temperature=1.3, divergence=div, alpha=0.4)
        run_and_check(s, t, labels, None, spec)


@pytest.mark.parametrize("use_loop", [False, True])
@pytest.mark.parametrize("dtypes", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                    (torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd", "mse"])
def test_low_precision_dtypes(request, divergence, dtypes, use_loop):
    if use_loop:
        request.getfixturevalue("loop_path")
    s_dtype, t_dtype = dtypes
    n, c = 5, 100
    s, t = make_inputs(n, c, 2, dtype=s_dtype, teacher_dtype=t_dtype, pad_from=90, seed=11)
    labels = labels_for(n, 90)
    spec = KDSpec(temperature=2.0, divergence=divergence, alpha=0.3)
    run_and_check(s, t, labels, None, spec, low_precision=True)


@pytest.mark.parametrize("use_loop", [False, True])
def test_no_grad_matches(request, use_loop):
    if use_loop:
        request.getfixturevalue("loop_path")
    for div, k in (("kl", 1), ("reverse_kl", 1), ("jsd", 2), ("ce", 2), ("mse", 1)):
        s, t = make_inputs(4, 70, k, seed=12)
        labels = labels_for(4, 70)
        spec = KDSpec(temperature=1.7, divergence=div, alpha=0.2)
        loss_g, _ = tk.kd_rows(s, t, labels, None, spec, True)
        loss, grad = tk.kd_rows(s, t, labels, None, spec, False)
        assert grad.numel() == 0
        torch.testing.assert_close(loss, loss_g, rtol=1e-6, atol=1e-6)
        ref_loss, _ = reference(s, t, labels, None, spec)
        torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6 * spec.soft_scale)


@pytest.mark.parametrize("use_loop", [False, True])
def test_label_out_of_range_gives_nan(request, use_loop):
    if use_loop:
        request.getfixturevalue("loop_path")
    s, t = make_inputs(4, 70, 1, seed=13)
    labels = torch.tensor([3, 70, -5, -100])
    loss, grad = tk.kd_rows(s, t, labels, None, KDSpec(alpha=0.5), True)
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1]) and torch.isnan(loss[2])
    assert loss[3] == 0 and bool((grad[3] == 0).all()) and torch.isfinite(grad[0]).all()


@pytest.mark.parametrize("use_loop", [False, True])
def test_row_weight_and_loss_scale(request, use_loop):
    """Optional keywords used by mkd_fast.ops: rows scaled by loss_scale * row_weight[r]; a zero weight
    makes the row inactive (nothing it holds may leak)."""
    if use_loop:
        request.getfixturevalue("loop_path")
    n, c = 5, 70
    s, t = make_inputs(n, c, 2, seed=18)
    labels = labels_for(n, c, ignore_rows=(4,))
    s[2] = float("nan")
    weight = torch.tensor([0.5, -2.0, 0.0, 3.0, 1.0])
    for div in ("kl", "reverse_kl", "mse"):
        spec = KDSpec(temperature=1.5, divergence=div, alpha=0.3)
        ref_loss, ref_grad = reference(s, t, labels, weight != 0, spec)
        for w, scale in ((weight, 0.25), (weight.double(), 1.0)):
            loss, grad = tk.kd_rows(s, t, labels, None, spec, True, row_weight=w, loss_scale=scale)
            f = scale * weight.double()
            assert_close_rows(loss, grad, ref_loss * f, ref_grad * f[:, None], spec)
            assert loss[2] == 0 and bool((grad[2] == 0).all())
        # a broadcast weight (stride 0) and a zero loss scale
        loss, grad = tk.kd_rows(s, t, labels, None, spec, True, row_weight=torch.tensor(2.0).expand(n))
        ok = torch.tensor([True, True, False, True, True])
        torch.testing.assert_close(loss[ok].double(), 2.0 * reference(s, t, labels, None, spec)[0][ok],
                                   rtol=1e-5, atol=1e-5)
        loss, grad = tk.kd_rows(s, t, labels, None, spec, True, loss_scale=0.0)
        assert bool((loss == 0).all()) and bool((grad == 0).all())


# ------------------------------------------------------------------------------------------------
# scale_rows
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_scale_rows(dtype):
    g = torch.Generator().manual_seed(14)
    grad = torch.randn(7, 300, generator=g).to(dtype)
    scale = torch.randn(7, generator=g)
    # float32 product rounded once to the dtype.  The interpreter rounds float32 -> bfloat16 by
    # truncation (the GPU rounds to nearest even), hence one bf16 ulp of slack.
    tol = dict(rtol=2.0 ** -7 if dtype == torch.bfloat16 else 0.0, atol=0.0)

    def expect(src, sc):
        return (src.float() * sc.float()[:, None]).to(dtype)

    out = tk.scale_rows(grad, scale)
    assert out.dtype == dtype and out.shape == grad.shape
    torch.testing.assert_close(out, expect(grad, scale), **tol)
    # the expanded grad_output of a sum (row stride 0), a 0-d scale, a float64 scale
    one = torch.tensor(2.5)
    torch.testing.assert_close(tk.scale_rows(grad, one.expand(7)), expect(grad, one.expand(7)), **tol)
    torch.testing.assert_close(tk.scale_rows(grad, one), expect(grad, one.expand(7)), **tol)
    torch.testing.assert_close(tk.scale_rows(grad, scale.double()), expect(grad, scale), **tol)
    # in place
    inplace = grad.clone()
    res = tk.scale_rows(inplace, scale, out=inplace)
    assert res.data_ptr() == inplace.data_ptr()
    torch.testing.assert_close(inplace, expect(grad, scale), **tol)
    # strided source
    big = torch.randn(7, 310, generator=g).to(dtype)
    src = big[:, 5:305]
    torch.testing.assert_close(tk.scale_rows(src, scale), expect(src, scale), **tol)


def test_scale_rows_after_kd_rows_matches_autograd():
    s, t = make_inputs(5, 33, 2, seed=15)
    spec = KDSpec(temperature=3.0, divergence="jsd")
    _, grad = tk.kd_rows(s, t, None, None, spec, True)
    w = torch.linspace(-1.0, 2.0, 5)
    s64 = s.double().requires_grad_(True)
    (ref,) = torch.autograd.grad((kd_rows_reference(s64, t.double(), None, None, spec) * w).sum(), s64)
    out = tk.scale_rows(grad, w, out=grad)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6 * spec.soft_scale)


# ------------------------------------------------------------------------------------------------
# the tests catch wrong gradients
# ------------------------------------------------------------------------------------------------
def test_checker_rejects_slightly_wrong_gradient():
    s, t = make_inputs(4, 17, 1, seed=16)
    spec = KDSpec(temperature=2.0, divergence="kl")
    loss, grad = tk.kd_rows(s, t, None, None, spec, True)
    ref_loss, ref_grad = reference(s, t, None, None, spec)
    assert_close_rows(loss, grad, ref_loss, ref_grad, spec)
    wrong = grad.clone()
    wrong[2, 5] *= 1.001
    with pytest.raises(AssertionError):
        assert_close_rows(loss, wrong, ref_loss, ref_grad, spec)
    with pytest.raises(AssertionError):  # a dropped T factor
        assert_close_rows(loss, grad * 2.0, ref_loss, ref_grad, spec)


@pytest.mark.parametrize("use_loop", [False, True])
def test_checker_rejects_mutated_kernel(request, monkeypatch, use_loop):
    """A kernel whose reverse-KL / JSD gradient forgets the row-sum term must fail the comparison."""
    if use_loop:
        request.getfixturevalue("loop_path")

    @triton.jit
    def wrong_soft_grad(ps, d, row_sum, beta, DIV: tl.constexpr):
        if DIV == 0 or DIV == 3:
            g = d
        else:
            g = tl.where(ps > 0.0, ps * d, 0.0)
        return g

    monkeypatch.setattr(tk, "_soft_grad", wrong_soft_grad)
    s, t = make_inputs(3, 70, 2, seed=17)
    for div in ("reverse_kl", "jsd"):
        with pytest.raises(AssertionError, match="grad"):
            run_and_check(s, t, None, None, KDSpec(divergence=div))


# ------------------------------------------------------------------------------------------------
# Through the public API (custom op, autograd, reductions), still in the interpreter.
@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("reduction", ["none", "batchmean"])
def test_kd_loss_api_with_triton_backend(divergence, reduction):
    from kd_oracle import assert_matches_gold, make_inputs, make_labels, make_mask

    lead = (2, 3)
    s, t = make_inputs(lead, 19, 2, neg_inf=True, seed=4)
    assert_matches_gold("triton", s, t, divergence=divergence, temperature=1.5, labels=make_labels(lead, 19),
                        alpha=0.2, mask=make_mask(lead), reduction=reduction,
                        upstream=torch.rand(lead) if reduction == "none" else None)
