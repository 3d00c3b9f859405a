"""The public API: argument errors, backend selection, torch.compile, autocast, the module and the CLI."""
import subprocess
import sys

import pytest
import torch

import mkd_fast
from mkd_fast import KDLoss, kd_loss
from mkd_fast.cli import main as cli_main

S = torch.randn(4, 7)
T_ = torch.randn(4, 7)


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(teacher_logits=torch.randn(4, 8)), ValueError, "teacher_logits"),
    (dict(teacher_logits=torch.randn(2, 3, 7)), ValueError, "teacher_logits"),
    (dict(student_logits=torch.randint(0, 3, (4, 7))), TypeError, "student_logits"),
    (dict(teacher_logits=torch.randint(0, 3, (4, 7))), TypeError, "teacher_logits"),
    (dict(student_logits=torch.randn(4, 0), teacher_logits=torch.randn(4, 0)), ValueError, "student_logits"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature="2"), TypeError, "temperature"),
    (dict(beta=1.5), ValueError, "beta"),
    (dict(beta=-0.1), ValueError, "beta"),
    (dict(alpha=2.0, labels=torch.zeros(4, dtype=torch.long)), ValueError, "alpha"),
    (dict(alpha=0.5), ValueError, "alpha"),  # alpha > 0 without labels
    (dict(labels=torch.tensor([0, 1, 7, 2])), ValueError, "labels"),
    (dict(labels=torch.tensor([0, 1, -5, 2])), ValueError, "labels"),
    (dict(labels=torch.zeros(4)), TypeError, "labels"),
    (dict(labels=torch.zeros(3, dtype=torch.long)), ValueError, "labels"),
    (dict(mask=torch.ones(4)), TypeError, "mask"),
    (dict(mask=torch.ones(5, dtype=torch.bool)), ValueError, "mask"),
    (dict(divergence="kld"), ValueError, "divergence"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(backend="gpu"), ValueError, "backend"),
    (dict(teacher_format="softmax"), ValueError, "teacher_format"),
    (dict(teacher_format="probs", divergence="mse"), ValueError, "teacher_format"),
    (dict(normalizer=0), ValueError, "normalizer"),
    (dict(ignore_index=1.5), TypeError, "ignore_index"),
])
def test_bad_arguments_name_the_argument(kwargs, exc, name):
    args = dict(student_logits=S, teacher_logits=T_)
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        kd_loss(args.pop("student_logits"), args.pop("teacher_logits"), **args)


def test_device_mismatch_names_argument():
    meta = torch.randn(4, 7, device="meta")
    with pytest.raises(ValueError, match="teacher_logits"):
        kd_loss(S, meta)
    with pytest.raises(ValueError, match="labels"):
        kd_loss(S, T_, labels=torch.zeros(4, dtype=torch.long, device="meta"))


def test_unavailable_backend_says_how_to_get_it():
    status = mkd_fast.backends()
    missing = [n for n, st in status.items() if not st.available]
    if not missing:
        pytest.skip("every backend is available on this machine")
    with pytest.raises(RuntimeError, match="backend") as info:
        kd_loss(S, T_, backend=missing[0])
    assert status[missing[0]].reason in str(info.value)


def test_backends_lists_every_backend_with_a_reason():
    status = mkd_fast.backends()
    assert set(status) == {"torch", "cpu", "triton", "cuda"}
    assert status["torch"].available
    for st in status.values():
        assert st.reason


def test_auto_picks_the_cpu_extension_for_cpu_tensors():
    from mkd_fast.backends import select_backend

    expected = "cpu" if mkd_fast.backends()["cpu"].available else "torch"
    assert select_backend("auto", torch.device("cpu"), torch.float32) == expected


def test_kdloss_module_matches_function_and_validates_early():
    crit = KDLoss(temperature=3.0, divergence="jsd", beta=0.2)
    labels = torch.tensor([0, 1, 2, -100])
    torch.testing.assert_close(crit(S, T_, labels=labels), kd_loss(S, T_, temperature=3.0, divergence="jsd",
                                                                    beta=0.2, labels=labels))
    assert "jsd" in repr(crit)
    with pytest.raises(ValueError, match="divergence"):
        KDLoss(divergence="nope")
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature=0)


def test_no_grad_forward_matches():
    with torch.no_grad():
        a = kd_loss(S, T_, temperature=2.0)
    b = kd_loss(S.clone().requires_grad_(True), T_, temperature=2.0)
    torch.testing.assert_close(a, b.detach())


def test_teacher_gets_no_gradient():
    t = T_.clone().requires_grad_(True)
    s = S.clone().requires_grad_(True)
    kd_loss(s, t, temperature=2.0).backward()
    assert s.grad is not None and t.grad is None


def _compiled_matches(backend_name, compile_backend):
    s = torch.randn(6, 33, requires_grad=True)
    t = torch.randn(2, 6, 33)
    labels = torch.tensor([1, 2, -100, 4, 5, 6])
    mask = torch.tensor([True, True, True, False, True, True])

    def f(x, y):
        return kd_loss(x, y, temperature=2.0, divergence="jsd", labels=labels, alpha=0.3, mask=mask,
                       backend=backend_name) * 2.0

    compiled = torch.compile(f, fullgraph=True, backend=compile_backend)
    got = compiled(s, t)
    (g_got,) = torch.autograd.grad(got, s)
    want = f(s, t)
    (g_want,) = torch.autograd.grad(want, s)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_got, g_want)


def test_torch_compile_fullgraph_aot_eager():
    _compiled_matches("auto", "aot_eager")


def test_torch_compile_fullgraph_inductor():
    torch._dynamo.reset()
    _compiled_matches("auto", "inductor")


def test_autocast_bfloat16_logits():
    layer = torch.nn.Linear(16, 50)
    x = torch.randn(8, 16)
    teacher = torch.randn(8, 50)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        assert logits.dtype == torch.bfloat16
        loss = kd_loss(logits, teacher, temperature=2.0)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    ref = kd_loss(logits.detach().float(), teacher, temperature=2.0, backend="torch")
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-6)
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


def test_cli_info_lists_backends(capsys):
    assert cli_main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "cpu", "triton", "cuda"):
        assert name in out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "mkd_fast.cli", "info"], capture_output=True, text=True,
                         check=True).stdout
    assert "mkd_fast" in out


@pytest.mark.parametrize("backend", ["cpu", "triton"])  # triton in the interpreter on CPU
@pytest.mark.parametrize("divergence,alpha", [("kl", 0.0), ("kl", 0.4), ("jsd", 0.0), ("reverse_kl", 0.2),
                                              ("mse", 0.3)])
def test_grad_inplace_writes_the_gradient_into_the_logits(backend, divergence, alpha):
    torch.manual_seed(0)
    w = torch.randn(8, 300, requires_grad=True)
    h = torch.randn(5, 8)
    t = torch.randn(5, 300)
    labels = torch.tensor([1, 2, -100, 4, 299])
    opts = dict(temperature=2.0, divergence=divergence, labels=labels, alpha=alpha, backend=backend)
    kd_loss(h @ w, t, **opts).backward()
    expected = w.grad.clone()
    w.grad = None
    logits = h @ w
    loss = kd_loss(logits, t, grad_inplace=True, **opts)
    loss.backward()
    torch.testing.assert_close(w.grad, expected, rtol=1e-5, atol=1e-6)
    ref = kd_loss((h @ w).detach().requires_grad_(True), t, **opts)
    torch.testing.assert_close(loss, ref)


def test_grad_inplace_refuses_when_logits_are_needed_elsewhere():
    w = torch.randn(8, 30, requires_grad=True)
    logits = torch.randn(4, 8) @ w
    other = (logits * logits).sum()  # mul saves the logits for its backward
    loss = kd_loss(logits, torch.randn(4, 30), grad_inplace=True, backend="cpu")
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + other).backward()


def test_grad_inplace_rejects_other_backends():
    with pytest.raises(ValueError, match="grad_inplace"):
        kd_loss(S.clone().requires_grad_(True), T_, grad_inplace=True, backend="torch")


def test_grad_inplace_refuses_overlapping_rows_and_leaves():
    w = torch.randn(1, 30, requires_grad=True)
    with pytest.raises(ValueError, match="share memory"):
        kd_loss((w * 1.0).expand(4, 30), torch.randn(4, 30), grad_inplace=True, backend="cpu")
    with pytest.raises(ValueError, match="leaf"):
        kd_loss(torch.randn(4, 30, requires_grad=True), torch.randn(4, 30), grad_inplace=True, backend="cpu")


def test_tensor_normalizer_must_be_positive():
    with pytest.raises(ValueError, match="normalizer"):
        kd_loss(S, T_, normalizer=torch.tensor(0.0))
