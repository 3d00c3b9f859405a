"""The reference (the oracle every kernel is judged by) against independent textbook formulas."""
import math

import pytest
import torch
import torch.nn.functional as F

from mkd_fast import kd_loss

T = 2.0


def _inputs(n=5, c=11, k=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    t = torch.randn(k, n, c, generator=g, dtype=torch.float64) * 2
    return s, (t[0] if k == 1 else t)


def test_kl_equals_torch_kl_div_times_t2():
    s, t = _inputs()
    expected = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                        reduction="batchmean") * T * T
    torch.testing.assert_close(kd_loss(s, t, temperature=T, backend="torch"), expected)


def test_batchmean_differs_from_kl_div_mean():
    """Documented: our "mean" is per counted row, F.kl_div's "mean" is per element."""
    s, t = _inputs(n=4, c=10)
    ours = kd_loss(s, t, reduction="mean", scale_t2=False, backend="torch")
    theirs = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="mean")
    torch.testing.assert_close(ours, theirs * 10)


def test_soft_ce_is_kl_plus_teacher_entropy():
    s, t = _inputs()
    pt = F.softmax(t / T, -1)
    entropy = -(pt * pt.log()).sum(-1)
    ce = kd_loss(s, t, temperature=T, divergence="ce", reduction="none", scale_t2=False, backend="torch")
    kl = kd_loss(s, t, temperature=T, divergence="kl", reduction="none", scale_t2=False, backend="torch")
    torch.testing.assert_close(ce, kl + entropy)


def test_reverse_kl_swaps_roles():
    s, t = _inputs()
    rkl = kd_loss(s, t, temperature=T, divergence="reverse_kl", reduction="sum", scale_t2=False, backend="torch")
    expected = F.kl_div(F.log_softmax(t / T, -1), F.log_softmax(s / T, -1), log_target=True, reduction="sum")
    torch.testing.assert_close(rkl, expected)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_matches_a_plain_loop(beta):
    s, t = _inputs(n=3, c=6)
    got = kd_loss(s, t, divergence="jsd", beta=beta, reduction="none", scale_t2=False, backend="torch")
    for r in range(3):
        ps, pt = F.softmax(s[r], -1).tolist(), F.softmax(t[r], -1).tolist()
        m = [beta * a + (1 - beta) * b for a, b in zip(pt, ps)]
        value = beta * sum(a * math.log(a / x) for a, x in zip(pt, m)) + (1 - beta) * sum(
            b * math.log(b / x) for b, x in zip(ps, m))
        assert abs(float(got[r]) - value) < 1e-12


def test_jsd_endpoints_are_forward_and_reverse_kl():
    s, t = _inputs()
    for beta, div in ((0.0, "kl"), (1.0, "reverse_kl")):
        torch.testing.assert_close(kd_loss(s, t, divergence="jsd", beta=beta, backend="torch"),
                                   kd_loss(s, t, divergence=div, backend="torch"))


def test_mse_is_mean_squared_logit_difference_without_temperature():
    s, t = _inputs()
    got = kd_loss(s, t, divergence="mse", temperature=5.0, reduction="none", backend="torch")
    torch.testing.assert_close(got, ((s - t) ** 2).mean(-1))


def test_ensemble_averages_tempered_probabilities():
    s, t = _inputs(k=3)
    avg = F.softmax(t / T, -1).mean(0)
    expected = (avg * (avg.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    torch.testing.assert_close(kd_loss(s, t, temperature=T, backend="torch"), expected)
    # the same ensemble given as probabilities or log-probabilities
    for fmt, values in (("probs", F.softmax(t, -1)), ("logprobs", F.log_softmax(t, -1))):
        torch.testing.assert_close(kd_loss(s, values, temperature=T, teacher_format=fmt, backend="torch"), expected)


def test_hard_label_mix_and_ignore_index():
    s, t = _inputs(n=6)
    labels = torch.tensor([1, 2, -100, 4, 5, -100])
    alpha = 0.3
    keep = labels != -100
    soft = F.kl_div(F.log_softmax(s[keep] / T, -1), F.log_softmax(t[keep] / T, -1), log_target=True,
                    reduction="none").sum(-1) * T * T
    hard = F.cross_entropy(s[keep], labels[keep], reduction="none")
    expected = (alpha * hard + (1 - alpha) * soft).mean()
    torch.testing.assert_close(kd_loss(s, t, temperature=T, labels=labels, alpha=alpha, backend="torch"), expected)


def test_padded_vocabulary_gives_finite_values_and_gradients():
    s, t = _inputs()
    s[:, -3:] = float("-inf")
    t[:, -3:] = float("-inf")
    for div in ("kl", "reverse_kl", "jsd", "ce", "mse"):
        x = s.clone().requires_grad_(True)
        loss = kd_loss(x, t, divergence=div, temperature=0.5, backend="torch")
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all(), div
        assert torch.count_nonzero(x.grad[:, -3:]) == 0


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "jsd", "ce", "mse"])
def test_reference_gradcheck(divergence):
    s, t = _inputs(n=3, c=5, k=2)
    labels = torch.tensor([0, -100, 4])
    mask = torch.tensor([True, True, False])
    assert torch.autograd.gradcheck(
        lambda x: kd_loss(x, t, divergence=divergence, temperature=1.3, labels=labels, alpha=0.25, mask=mask,
                          reduction="none", backend="torch"), (s.clone().requires_grad_(True),))
