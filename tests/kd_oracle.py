"""Float64 gold values and the "plain eager PyTorch in the same dtype" error baseline for loss tests.

Acceptance (as in apple/ml-cross-entropy): a backend passes when its error against the float64 gold value
is no worse than eager PyTorch's own error in the input dtype, plus a small tolerance.
"""
from __future__ import annotations

import torch

from mkd_fast import kd_loss
from mkd_fast.reference import active_rows, kd_rows_reference
from mkd_fast.validation import prepare_call

DEFAULTS = dict(temperature=1.0, divergence="kl", beta=0.5, teacher_format="logits", labels=None, alpha=0.0,
                ignore_index=-100, mask=None, reduction="batchmean", scale_t2=True, normalizer=None)


def reduce_rows(rows, call):
    """Test-side reduction, written independently of kd_loss's own."""
    if call.reduction == "none":
        return rows.reshape(call.lead_shape)
    total = rows.sum()
    if call.reduction == "sum":
        return total
    if call.normalizer is not None:
        return total / call.normalizer
    count = int(active_rows(rows.shape[0], call.labels, call.mask, call.spec.ignore_index, rows.device).sum())
    return total / max(count, 1)


def reference_loss_and_grad(student, teacher, upstream=None, compute_dtype=None, **options):
    """Loss and d loss / d student from the plain reference, computed in `compute_dtype`."""
    opts = {**DEFAULTS, **options}
    s = student.detach().clone().requires_grad_(True)
    call = prepare_call(s, teacher, backend="torch", **opts)
    rows = kd_rows_reference(call.student, call.teacher, call.labels, call.mask, call.spec,
                             compute_dtype=compute_dtype or (torch.float64 if s.dtype == torch.float64 else None))
    loss = reduce_rows(rows, call)
    out = loss if upstream is None else (loss * upstream).sum()
    (grad,) = torch.autograd.grad(out.sum(), s, allow_unused=True)
    return loss.detach(), (grad if grad is not None else torch.zeros_like(s))


def backend_loss_and_grad(backend, student, teacher, upstream=None, **options):
    s = student.detach().clone().requires_grad_(True)
    loss = kd_loss(s, teacher, backend=backend, **{**DEFAULTS, **options})
    out = loss if upstream is None else (loss * upstream).sum()
    (grad,) = torch.autograd.grad(out.sum(), s)
    return loss.detach(), grad


def _to64(x):
    return None if x is None else (x.to(torch.float64) if x.is_floating_point() else x)


def _finite_error(value, gold, name):
    value, gold = value.to(torch.float64), gold.to(torch.float64)
    same_nonfinite = torch.equal(torch.isfinite(value), torch.isfinite(gold))
    assert same_nonfinite, f"{name}: non-finite entries differ from the float64 gold value"
    both_inf = ~torch.isfinite(gold)
    if both_inf.any():
        assert torch.equal(value[both_inf].nan_to_num(), gold[both_inf].nan_to_num()), f"{name}: wrong infinities"
    finite = torch.isfinite(gold)
    if not finite.any():
        return 0.0
    return float((value[finite] - gold[finite]).abs().max().detach())


def assert_matches_gold(backend, student, teacher, *, upstream=None, rtol=1e-5, atol=1e-6, **options):
    """Compare a backend with float64 gold, allowing eager same-dtype error + tolerance."""
    gold_loss, gold_grad = reference_loss_and_grad(_to64(student), _to64(teacher), upstream=upstream, **options)
    eager_loss, eager_grad = reference_loss_and_grad(student, teacher, upstream=upstream,
                                                     compute_dtype=student.dtype, **options)
    loss, grad = backend_loss_and_grad(backend, student, teacher, upstream=upstream, **options)
    assert loss.shape == gold_loss.shape and grad.shape == student.shape and grad.dtype == student.dtype
    scale_l = float(gold_loss[torch.isfinite(gold_loss)].abs().max()) if torch.isfinite(gold_loss).any() else 0.0
    scale_g = float(gold_grad.abs().max()) if gold_grad.numel() else 0.0
    err_l = _finite_error(loss, gold_loss, "loss")
    # Where eager same-dtype PyTorch itself breaks down (overflow in bf16, say), fall back to a fixed bound.
    fallback = 1e-4 if student.dtype in (torch.float32, torch.float64) else 2e-2
    eager_l_ok = torch.equal(torch.isfinite(eager_loss), torch.isfinite(gold_loss))
    base_l = _finite_error(eager_loss, gold_loss, "eager loss") if eager_l_ok else fallback * scale_l
    assert err_l <= base_l + atol + rtol * scale_l, f"loss error {err_l:.3g} > eager {base_l:.3g} + tol"
    err_g = _finite_error(grad, gold_grad, "grad")
    eager_ok = torch.equal(torch.isfinite(eager_grad), torch.isfinite(gold_grad))
    base_g = _finite_error(eager_grad, gold_grad, "eager grad") if eager_ok else fallback * scale_g
    assert err_g <= base_g + atol + rtol * scale_g, f"grad error {err_g:.3g} > eager {base_g:.3g} + tol"
    return loss, grad


def make_inputs(lead, n_classes, n_teachers=1, dtype=torch.float32, teacher_format="logits", neg_inf=False,
                spread=3.0, seed=0):
    """Random student/teacher logits; with neg_inf, some classes are -inf in both (a padded vocabulary)."""
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(*lead, n_classes, generator=g, dtype=torch.float64) * spread
    teacher = torch.randn(n_teachers, *lead, n_classes, generator=g, dtype=torch.float64) * spread
    if neg_inf and n_classes > 2:
        padded = torch.rand(n_classes, generator=g) < 0.3
        padded[0] = False
        student[..., padded] = float("-inf")
        teacher[..., padded] = float("-inf")
    if teacher_format == "logprobs":
        teacher = torch.log_softmax(teacher, dim=-1)
    elif teacher_format == "probs":
        teacher = torch.softmax(teacher, dim=-1)
    if n_teachers == 1:
        teacher = teacher[0]
    return student.to(dtype), teacher.to(dtype)


def make_labels(lead, n_classes, ignore_every=3, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(0, n_classes, lead, generator=g)
    flat = labels.view(-1)
    flat[::ignore_every] = -100
    return labels


def make_mask(lead, seed=0):
    g = torch.Generator().manual_seed(seed + 2)
    mask = torch.rand(lead, generator=g) > 0.25
    return mask
