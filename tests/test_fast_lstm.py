"""FastBiLSTM on CPU against nn.LSTM on the packed batch (the semantics it promises), plus its error handling.

The reference is ``nn.LSTM(pack_padded_sequence(x, lengths, enforce_sorted=False))`` padded back to the
input's length. Float32 results must agree to rtol 1e-5 / atol 1e-6 (the float32 rounding of both sides;
nn.LSTM itself lands as far from a float64 evaluation).
"""
import copy
import itertools
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import mkd_fast
from mkd_fast import FastBiLSTM

if not mkd_fast.backends()["cpu"].available:
    pytest.skip(f"CPU kernels unavailable: {mkd_fast.backends()['cpu'].reason}", allow_module_level=True)

TOL = dict(rtol=1e-5, atol=1e-6)


def reference(lstm, x, lengths):
    """nn.LSTM on the packed batch, padded back to T: what FastBiLSTM must return."""
    T = x.shape[1] if lstm.batch_first else x.shape[0]
    packed = pack_padded_sequence(x, lengths, batch_first=lstm.batch_first, enforce_sorted=False)
    out, (h, c) = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=lstm.batch_first, total_length=T)
    return out, h, c


def make_case(E, H, layers, bidirectional, batch_first, B, T, lengths_kind, seed=0):
    torch.manual_seed(seed)
    lstm = nn.LSTM(E, H, layers, bidirectional=bidirectional, batch_first=batch_first)
    x = torch.randn(B, T, E) if batch_first else torch.randn(T, B, E)
    if lengths_kind == "equal":
        lengths = torch.full((B,), T, dtype=torch.int64)
    else:  # random, with the extremes 1 and T present when there is room
        lengths = torch.randint(1, T + 1, (B,))
        lengths[0] = 1
        if B > 1:
            lengths[-1] = T
    return lstm, x, lengths


def assert_matches(fast_result, ref_result, **tol):
    out, (h, c) = fast_result
    r_out, r_h, r_c = ref_result
    torch.testing.assert_close(out, r_out, **(tol or TOL))
    torch.testing.assert_close(h, r_h, **(tol or TOL))
    torch.testing.assert_close(c, r_c, **(tol or TOL))


@pytest.mark.parametrize("layers,bidirectional,batch_first", list(itertools.product([1, 2], [True, False], [True, False])))
@pytest.mark.parametrize("E,H,B,T", [(5, 7, 1, 6), (13, 150, 33, 9), (3, 17, 33, 1)])
@pytest.mark.parametrize("lengths_kind", ["random", "equal"])
def test_matches_packed_nn_lstm(layers, bidirectional, batch_first, E, H, B, T, lengths_kind):
    lstm, x, lengths = make_case(E, H, layers, bidirectional, batch_first, B, T, lengths_kind)
    fast = FastBiLSTM.from_lstm(lstm)
    with torch.no_grad():
        assert_matches(fast(x, lengths), reference(lstm, x, lengths))


@pytest.mark.parametrize("H", [1, 16, 33, 300])
def test_hidden_sizes(H):
    lstm, x, lengths = make_case(11, H, 2, True, True, 9, 7, "random", seed=H)
    with torch.no_grad():
        assert_matches(FastBiLSTM.from_lstm(lstm)(x, lengths), reference(lstm, x, lengths))


def test_padding_is_zero_and_states_follow_original_order():
    lstm, x, _ = make_case(4, 6, 1, True, True, 5, 8, "random")
    lengths = torch.tensor([3, 8, 1, 5, 2])
    with torch.no_grad():
        out, (h, c) = FastBiLSTM.from_lstm(lstm)(x, lengths)
        for b, n in enumerate(lengths.tolist()):
            assert torch.all(out[b, n:] == 0)
            alone, (hb, cb) = lstm(x[b:b + 1, :n])  # one sequence alone, no padding at all
            torch.testing.assert_close(out[b:b + 1, :n], alone, **TOL)
            torch.testing.assert_close(h[:, b:b + 1], hb, **TOL)
            torch.testing.assert_close(c[:, b:b + 1], cb, **TOL)


def test_all_shorter_than_T_and_default_lengths():
    lstm, x, _ = make_case(6, 10, 1, True, False, 4, 9, "random")
    lengths = torch.tensor([2, 5, 3, 5])  # no sequence reaches T = 9
    fast = FastBiLSTM.from_lstm(lstm)
    with torch.no_grad():
        out, _ = fast(x, lengths)
        assert out.shape == (9, 4, 20) and torch.all(out[5:] == 0)
        assert_matches(fast(x, lengths), reference(lstm, x, lengths))
        full = torch.full((4,), 9)
        assert_matches(fast(x), reference(lstm, x, full))  # lengths=None: every sequence has length T
        assert_matches(fast(x, [5, 2, 3, 9]), reference(lstm, x, torch.tensor([5, 2, 3, 9])))  # a list


@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_sequence_input(enforce_sorted):
    lstm, x, lengths = make_case(7, 12, 2, True, True, 6, 5, "random")
    if enforce_sorted:
        lengths, _ = torch.sort(lengths, descending=True)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=enforce_sorted)
    with torch.no_grad():
        out, (h, c) = FastBiLSTM.from_lstm(lstm)(packed)
        r_out, (r_h, r_c) = lstm(packed)
    assert isinstance(out, PackedSequence)
    assert torch.equal(out.batch_sizes, r_out.batch_sizes)
    torch.testing.assert_close(out.data, r_out.data, **TOL)
    torch.testing.assert_close(h, r_h, **TOL)
    torch.testing.assert_close(c, r_c, **TOL)


def test_chunks_and_tiles_do_not_change_results():
    lstm, x, lengths = make_case(9, 21, 2, True, True, 23, 7, "random")
    fast = FastBiLSTM.from_lstm(lstm)
    with torch.no_grad():
        ref = reference(lstm, x, lengths)
        for chunk_steps, tile_rows in [(0, 0), (1, 0), (3, 1), (2, 5), (0, 48)]:
            fast.chunk_steps, fast.tile_rows = chunk_steps, tile_rows
            assert_matches(fast(x, lengths), ref)


def test_non_contiguous_input_and_inference_mode():
    lstm, x, lengths = make_case(8, 10, 1, True, False, 5, 6, "random")
    x_bt = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, batch-major memory
    assert not x_bt.is_contiguous()
    with torch.inference_mode():
        assert_matches(FastBiLSTM.from_lstm(lstm)(x_bt, lengths), reference(lstm, x, lengths))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 12.0])
def test_gate_nonlinearities_small_and_saturated(scale):
    """Tiny pre-activations (tanh's series branch), ordinary ones and saturated gates: against a float64
    evaluation, FastBiLSTM's float32 error stays within a small factor of nn.LSTM's own float32 error."""
    lstm, x, lengths = make_case(6, 19, 1, True, True, 7, 10, "random", seed=3)
    with torch.no_grad():
        for p in lstm.parameters():
            p.mul_(scale)
        gold = reference(copy.deepcopy(lstm).double(), x.double(), lengths)
        out, (h, c) = FastBiLSTM.from_lstm(lstm)(x, lengths)
        ref = reference(lstm, x, lengths)
    for mine, theirs, exact in zip((out, h, c), ref, gold):
        mine_err = (mine.double() - exact).abs().max().item()
        their_err = (theirs.double() - exact).abs().max().item()
        assert mine_err <= 4 * their_err + 1e-10, (mine_err, their_err)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_input(dtype):
    """bf16/fp16 in and out, float32 inside: close to float32 on the rounded input (output rounding only)."""
    lstm, x, lengths = make_case(10, 24, 2, True, True, 6, 8, "random")
    xr = x.to(dtype)
    with torch.no_grad():
        out, (h, c) = FastBiLSTM.from_lstm(lstm)(xr, lengths)
        r_out, r_h, r_c = reference(lstm, xr.float(), lengths)
    assert out.dtype == h.dtype == c.dtype == dtype
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(out.float(), r_out, **tol)
    torch.testing.assert_close(h.float(), r_h, **tol)
    torch.testing.assert_close(c.float(), r_c, **tol)


def test_reduced_precision_weights():
    lstm, x, lengths = make_case(10, 24, 1, True, True, 6, 8, "random")
    lstm = lstm.to(torch.bfloat16)
    with torch.no_grad():
        out, _ = FastBiLSTM.from_lstm(lstm)(x.bfloat16(), lengths)
        r_out, _, _ = reference(copy.deepcopy(lstm).float(), x.bfloat16().float(), lengths)
    torch.testing.assert_close(out.float(), r_out, rtol=1e-2, atol=1e-2)


def test_grad_enabled_falls_back_to_nn_lstm_and_warns_once():
    lstm, x, lengths = make_case(5, 8, 1, True, True, 4, 6, "random")
    fast = FastBiLSTM.from_lstm(lstm)
    with pytest.warns(RuntimeWarning, match="inference-only"):
        out, (h, c) = fast(x, lengths)
    assert out.requires_grad  # nn.LSTM ran: the result is differentiable
    out.sum().backward()
    assert lstm.weight_hh_l0.grad is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast(x, lengths)  # warned once per module
    with torch.no_grad():
        assert_matches((out.detach(), (h.detach(), c.detach())), reference(lstm, x, lengths))
    lstm.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out2, _ = fast(x, lengths)  # grad mode on, nothing requires grad: the kernel runs
    assert not out2.requires_grad


def test_empty_batch():
    lstm = nn.LSTM(4, 6, 2, bidirectional=True, batch_first=True)
    with torch.no_grad():
        out, (h, c) = FastBiLSTM.from_lstm(lstm)(torch.randn(0, 5, 4), torch.zeros(0, dtype=torch.int64))
    assert out.shape == (0, 5, 12) and h.shape == (4, 0, 6) and c.shape == (4, 0, 6)


def test_no_bias_lstm_and_default_dtype_float64():
    _, x, lengths = make_case(5, 9, 2, True, True, 4, 6, "random")
    lstm = nn.LSTM(5, 9, 2, bias=False, bidirectional=True, batch_first=True)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)   # must not leak into the kernels' float32 weights
    try:
        with torch.no_grad():
            assert_matches(FastBiLSTM.from_lstm(lstm)(x, lengths), reference(lstm, x, lengths))
    finally:
        torch.set_default_dtype(previous)


def test_strided_feature_dimension():
    lstm, x, lengths = make_case(6, 8, 1, True, True, 4, 5, "random")
    wide = torch.randn(4, 5, 12)
    wide[..., ::2] = x
    strided = wide[..., ::2]                 # the feature dimension has stride 2
    assert strided.stride(-1) == 2
    with torch.no_grad():
        assert_matches(FastBiLSTM.from_lstm(lstm)(strided, lengths), reference(lstm, x, lengths))


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts_give_the_same_result(threads):
    lstm, x, lengths = make_case(7, 19, 2, True, True, 37, 9, "random")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            assert_matches(FastBiLSTM.from_lstm(lstm)(x, lengths), reference(lstm, x, lengths))
    finally:
        torch.set_num_threads(previous)


def test_refresh_after_writing_param_data():
    lstm, x, lengths = make_case(5, 9, 1, True, True, 4, 6, "random")
    fast = FastBiLSTM.from_lstm(lstm)
    with torch.no_grad():
        fast(x, lengths)
        lstm.weight_hh_l0.data.mul_(-1.0)     # bypasses the version counter
        fast.refresh()
        assert_matches(fast(x, lengths), reference(lstm, x, lengths))


def test_weight_updates_are_picked_up():
    lstm, x, lengths = make_case(5, 9, 1, True, True, 4, 6, "random")
    fast = FastBiLSTM.from_lstm(lstm)
    with torch.no_grad():
        fast(x, lengths)
        lstm.weight_hh_l0_reverse.mul_(-0.5)  # in place
        assert_matches(fast(x, lengths), reference(lstm, x, lengths))
        lstm.weight_ih_l0 = nn.Parameter(torch.randn_like(lstm.weight_ih_l0))  # replaced
        assert_matches(fast(x, lengths), reference(lstm, x, lengths))


def test_embedding_table_path():
    torch.manual_seed(0)
    emb = nn.Embedding(50, 12)
    lstm = nn.LSTM(12, 16, 2, bidirectional=True, batch_first=True)
    fast = FastBiLSTM.from_lstm(lstm)
    ids = torch.randint(0, 50, (5, 7))
    lengths = torch.tensor([7, 1, 4, 7, 2])
    with torch.no_grad():
        table = fast.precompute_embedding_table(emb.weight)
        assert table.shape == (50, 2 * 4 * 16)
        expected = reference(lstm, emb(ids), lengths)
        assert_matches(fast(ids, lengths), expected)
        packed = pack_padded_sequence(ids, lengths, batch_first=True, enforce_sorted=False)
        out, (h, c) = fast(packed)
        r_out, (r_h, r_c) = lstm(pack_padded_sequence(emb(ids), lengths, batch_first=True, enforce_sorted=False))
        torch.testing.assert_close(out.data, r_out.data, **TOL)
        torch.testing.assert_close(h, r_h, **TOL)
        torch.testing.assert_close(c, r_c, **TOL)
        emb.weight.mul_(2.0)  # the table follows the embedding
        assert_matches(fast(ids, lengths), reference(lstm, emb(ids), lengths))
        bad = ids.clone()
        bad[1, 0] = 50
        with pytest.raises(RuntimeError, match="input: token id 50 out of range"):
            fast(bad, lengths)
        bad[1, 0], bad[1, 3] = 0, 99  # beyond the length of row 1: padding, never read
        fast(bad, lengths)


def test_errors_name_the_argument():
    lstm = nn.LSTM(6, 5, batch_first=True, bidirectional=True)
    fast = FastBiLSTM.from_lstm(lstm)
    x = torch.randn(3, 4, 6)
    cases = [
        (lambda: fast(torch.randn(4, 6), [1, 2, 3, 4]), ValueError, "input: expected a 3-D"),
        (lambda: fast(torch.randn(3, 4, 7), [1, 2, 3]), ValueError, "input: expected 6 features"),
        (lambda: fast(x.double(), [1, 2, 3]), TypeError, "input: expected float32"),
        (lambda: fast(x.long(), [1, 2, 3]), TypeError, "input: integer token ids need"),
        (lambda: fast(x, [1, 2]), ValueError, "lengths: expected a 1-D tensor of 3"),
        (lambda: fast(x, [1, 0, 2]), ValueError, r"lengths: expected values in \[1, 4\]"),
        (lambda: fast(x, [1, 5, 2]), ValueError, r"lengths: expected values in \[1, 4\]"),
        (lambda: fast(x, torch.tensor([1.0, 2.0, 3.0])), TypeError, "lengths: expected an integer"),
        (lambda: fast(x, torch.tensor([1, 2, 3], device="meta")), ValueError, "lengths: expected a CPU tensor"),
        (lambda: fast(pack_padded_sequence(x, [4, 2, 1], batch_first=True), [4, 2, 1]), ValueError,
         "lengths: must be None"),
        (lambda: FastBiLSTM.from_lstm(nn.GRU(3, 4)), TypeError, "lstm: expected a torch.nn.LSTM"),
        (lambda: FastBiLSTM.from_lstm(nn.LSTM(3, 4, proj_size=2)), ValueError, "lstm: proj_size=2"),
        (lambda: fast.precompute_embedding_table(torch.randn(10, 5)), ValueError, "embedding_weight: expected 6"),
        (lambda: fast(torch.randn(3, 0, 6)), ValueError, r"input: expected at least one time step"),
        (lambda: fast(x, (torch.zeros(2, 3, 5), torch.zeros(2, 3, 5))), TypeError, "lengths: got a tuple of tensors"),
        (lambda: fast(x, [1.5, 2.0, 3.0]), TypeError, "lengths: expected an integer"),
    ]
    with torch.no_grad():
        for fn, exc, match in cases:
            with pytest.raises(exc, match=match):
                fn()


def test_exported():
    assert mkd_fast.FastBiLSTM is FastBiLSTM and "FastBiLSTM" in mkd_fast.__all__
