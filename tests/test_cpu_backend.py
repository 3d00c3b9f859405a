"""The C++ CPU backend against float64 gold values over the whole option space."""
import itertools

import pytest
import torch

import mkd_fast
from kd_oracle import assert_matches_gold, make_inputs, make_labels, make_mask



def test_cpu_extension_is_built_and_loads():
    """The CPU extension is always built: if it is missing or broken, fail (never skip) the suite."""
    status = mkd_fast.backends()["cpu"]
    assert status.available, status.reason

DIVERGENCES = ["kl", "reverse_kl", "jsd", "ce", "mse"]
FORMATS = ["logits", "logprobs", "probs"]
REDUCTIONS = ["none", "sum", "mean", "batchmean"]


def _grid():
    for div, fmt, k, red in itertools.product(DIVERGENCES, FORMATS, [1, 2, 4], REDUCTIONS):
        if div == "mse" and fmt == "probs":
            continue
        yield div, fmt, k, red


@pytest.mark.parametrize("n_classes", [5, 17])  # the scalar small-row path and the vectorised one
@pytest.mark.parametrize("divergence,teacher_format,n_teachers,reduction", list(_grid()))
def test_option_grid(divergence, teacher_format, n_teachers, reduction, n_classes):
    """Every divergence x teacher format x ensemble size x reduction, with labels, mask and padding."""
    lead = (3, 5)
    s, t = make_inputs(lead, n_classes, n_teachers, teacher_format=teacher_format, neg_inf=True, seed=n_teachers)
    assert_matches_gold("cpu", s, t, divergence=divergence, teacher_format=teacher_format, temperature=2.0,
                        labels=make_labels(lead, n_classes), alpha=0.3, mask=make_mask(lead), reduction=reduction,
                        beta=0.3)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0, 4.0, 20.0])
def test_temperatures(divergence, temperature):
    for n_classes in (3, 130):
        s, t = make_inputs((6,), n_classes, 2, neg_inf=n_classes > 3, seed=3)
        assert_matches_gold("cpu", s, t, divergence=divergence, temperature=temperature)


@pytest.mark.parametrize("n_classes", [1, 2, 3, 17, 4097, 32000, 50257])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_class_sizes(n_classes, divergence):
    s, t = make_inputs((4,), n_classes, 1, seed=n_classes)
    assert_matches_gold("cpu", s, t, divergence=divergence, temperature=2.0, labels=make_labels((4,), n_classes),
                        alpha=0.25)


@pytest.mark.parametrize("divergence", ["kl", "jsd"])
def test_vocabulary_256k_few_rows(divergence):
    """Fewer rows than threads with a huge vocabulary: the row is split across threads."""
    s, t = make_inputs((2,), 262144, 2, seed=7)
    assert_matches_gold("cpu", s, t, divergence=divergence, temperature=1.5)


@pytest.mark.parametrize("student_dtype,teacher_dtype", [
    (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16), (torch.bfloat16, torch.float32),
    (torch.float32, torch.bfloat16), (torch.float32, torch.float16)])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_reduced_precision(student_dtype, teacher_dtype, divergence):
    s, _ = make_inputs((4, 3), 257, 1, dtype=student_dtype, seed=11)
    _, t = make_inputs((4, 3), 257, 1, dtype=teacher_dtype, seed=12)
    assert_matches_gold("cpu", s, t, divergence=divergence, temperature=2.0, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.parametrize("divergence", ["kl", "ce", "reverse_kl", "mse"])
def test_hard_label_mixing(alpha, temperature, divergence):
    lead = (12,)
    s, t = make_inputs(lead, 40, 1, seed=5)
    assert_matches_gold("cpu", s, t, divergence=divergence, temperature=temperature,
                        labels=make_labels(lead, 40), alpha=alpha)


@pytest.mark.parametrize("lead", [(0,), (2, 0), (0, 3)])
def test_empty_batch(lead):
    s, t = make_inputs(lead, 9, 2)
    for reduction in REDUCTIONS:
        loss, grad = assert_matches_gold("cpu", s, t, reduction=reduction)
        assert grad.shape == s.shape
        if reduction != "none":
            assert float(loss) == 0.0


def test_non_contiguous_inputs():
    wide = torch.randn(6, 4, 50, dtype=torch.float64).to(torch.float32)
    student = wide[:, 1::2, :31]  # row stride 100 inside [..., C], leading dims not viewable as rows
    teachers = torch.randn(6, 2, 3, 31).permute(2, 0, 1, 3)  # [K, 6, 2, 31] with K the middle memory axis
    assert not student.is_contiguous() and not teachers.is_contiguous()
    assert_matches_gold("cpu", student, teachers, divergence="jsd", temperature=1.7)
    transposed = torch.randn(31, 8).t()  # class stride != 1: copied internally
    assert_matches_gold("cpu", transposed, torch.randn(8, 31), divergence="kl")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_rows_masked_gives_zero_not_nan(reduction):
    s, t = make_inputs((4, 6), 11, 1, neg_inf=True)
    s.requires_grad_(True)
    loss = mkd_fast.kd_loss(s, t, mask=torch.zeros(4, 6, dtype=torch.bool), reduction=reduction, backend="cpu")
    loss.sum().backward()
    assert torch.count_nonzero(loss) == 0 and not torch.isnan(loss).any()
    assert torch.count_nonzero(s.grad) == 0


def test_upstream_gradient_with_reduction_none():
    """A non-trivial grad_output per row exercises the backward's row scaling."""
    lead = (5, 7)
    s, t = make_inputs(lead, 33, 3, seed=2)
    upstream = torch.rand(lead, dtype=torch.float64) * 3 - 1
    assert_matches_gold("cpu", s, t, divergence="reverse_kl", temperature=1.3, reduction="none",
                        upstream=upstream.to(torch.float32))


def test_normalizer_for_gradient_accumulation():
    s, t = make_inputs((8,), 21, 1, seed=4)
    assert_matches_gold("cpu", s, t, normalizer=32)
    assert_matches_gold("cpu", s, t, normalizer=torch.tensor(32.0), labels=make_labels((8,), 21))


def test_backward_with_retain_graph():
    s, t = make_inputs((6,), 19, 1, seed=9)
    s.requires_grad_(True)
    loss = mkd_fast.kd_loss(s, t, temperature=2.0, backend="cpu")
    (g3,) = torch.autograd.grad(loss * 3, s, retain_graph=True)  # scaled: the saved buffer stays intact
    (g1,) = torch.autograd.grad(loss, s, retain_graph=True)  # unscaled: the saved buffer is handed out
    torch.testing.assert_close(g3, 3 * g1)
    g1.zero_()  # whoever got the buffer may change it: a further backward must refuse, not mislead
    with pytest.raises(RuntimeError, match="second backward"):
        torch.autograd.grad(loss, s)


def test_double_backward_is_refused_not_silently_wrong():
    s, t = make_inputs((4,), 19, 1, seed=9)
    s.requires_grad_(True)
    (g,) = torch.autograd.grad(mkd_fast.kd_loss(s, t, backend="cpu"), s, create_graph=True)
    with pytest.raises(RuntimeError):
        (g * g).sum().backward()


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_gradcheck_float64(divergence):
    lead = (3,)
    s, t = make_inputs(lead, 7, 2, dtype=torch.float64, neg_inf=False, seed=1)
    labels = make_labels(lead, 7)

    def f(x):
        return mkd_fast.kd_loss(x, t, divergence=divergence, temperature=1.7, labels=labels, alpha=0.4,
                                reduction="none", backend="cpu")

    assert torch.autograd.gradcheck(f, (s.clone().requires_grad_(True),))


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])  # triton: in the interpreter on CPU
@pytest.mark.parametrize("n_classes", [3, 40, 40000])
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_nan_inputs_are_never_hidden(backend, n_classes, divergence):
    """A NaN logit (student or teacher) makes that row's loss NaN: never silently skipped or finite."""
    s, t = make_inputs((3,), n_classes, 2, seed=6)
    s[0, 1] = float("nan")
    t[1, 2, 0] = float("nan")
    s.requires_grad_(True)
    rows = mkd_fast.kd_loss(s, t, divergence=divergence, temperature=2.0, reduction="none", backend=backend)
    assert torch.isnan(rows[0]) and torch.isnan(rows[2]) and torch.isfinite(rows[1])
    (grad,) = torch.autograd.grad(rows.sum(), s)
    assert torch.isfinite(grad[1]).all()
    if divergence != "mse":  # MSE's gradient is per class: only the NaN class is NaN
        assert torch.isnan(grad[0]).all() and torch.isnan(grad[2]).all()
