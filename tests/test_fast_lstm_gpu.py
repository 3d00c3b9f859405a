"""FastBiLSTM's CUDA kernels (csrc/cuda/lstm_cuda_*) against a float64 nn.LSTM on the packed batch.

Skipped without a CUDA GPU and a compiled ``mkd_fast._C_cuda`` with the LSTM kernels (CI compile-checks the
sources with `make check-cuda`). Both recurrence paths are exercised: the persistent kernel (weights in
shared memory, thread-block clusters on sm_90+) and the per-step fallback.
"""
import copy
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from mkd_fast import FastBiLSTM
from mkd_fast.kernels import lstm_cuda

if not (torch.cuda.is_available() and lstm_cuda.available()):
    pytest.skip("no CUDA GPU with mkd_fast._C_cuda's LSTM kernels (sources are compile-checked by "
                "`make check-cuda`)", allow_module_level=True)
pytestmark = pytest.mark.gpu
PATHS = ["auto", "persistent", "per_step"]
F32 = dict(rtol=1e-5, atol=2e-6)  # float32 kernels vs float64: rounding of the float32 evaluation


def gold(lstm, x, lengths):
    """float64 nn.LSTM on CPU over the packed batch, padded back to T."""
    lstm64 = copy.deepcopy(lstm).cpu().double()
    T = x.shape[1] if lstm.batch_first else x.shape[0]
    packed = pack_padded_sequence(x.detach().cpu().double(), lengths, batch_first=lstm.batch_first,
                                  enforce_sorted=False)
    out, (h, c) = lstm64(packed)
    out, _ = pad_packed_sequence(out, batch_first=lstm.batch_first, total_length=T)
    return out, h, c


def persistent_fits(hidden):
    """Whether the persistent kernel can hold W_hh on chip here (see csrc/cuda/README.md)."""
    major, _ = torch.cuda.get_device_capability()
    smem = getattr(torch.cuda.get_device_properties(0), "shared_memory_per_block_optin", 49152)
    for n in ([1, 2, 4, 8] if major >= 9 else [1]):
        units = -(-hidden // n)
        if n > 1 and units * (n - 1) >= hidden:
            break
        if hidden * units * 16 + 2 * 4 * (hidden | 1) * 4 <= smem and units <= 512:
            return True
    return False


def case(E, H, layers, bidirectional, batch_first, B, T, seed=0):
    torch.manual_seed(seed)
    lstm = nn.LSTM(E, H, layers, bidirectional=bidirectional, batch_first=batch_first)
    x = torch.randn(B, T, E) if batch_first else torch.randn(T, B, E)
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T
    if B > 2:
        lengths[1] = 1
    return lstm, x, lengths


def run(lstm, x, lengths, path):
    fast = FastBiLSTM.from_lstm(copy.deepcopy(lstm).cuda())
    fast.cuda_path = path
    with torch.no_grad():
        out, (h, c) = fast(x.cuda(), lengths)
    torch.cuda.synchronize()
    return out, h, c


def check(got, want, **tol):
    for g, w in zip(got, want):
        assert g.is_cuda
        torch.testing.assert_close(g.double().cpu(), w, **(tol or F32))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layers,bidirectional,batch_first", list(itertools.product([1, 2], [True, False], [True, False])))
@pytest.mark.parametrize("E,H,B,T", [(5, 7, 1, 6), (13, 150, 33, 9), (300, 300, 8, 20), (16, 192, 5, 12)])
def test_matches_float64_nn_lstm(path, layers, bidirectional, batch_first, E, H, B, T):
    lstm, x, lengths = case(E, H, layers, bidirectional, batch_first, B, T)
    if path == "persistent" and not persistent_fits(H):
        with pytest.raises(RuntimeError, match="do not fit|persistent"):
            run(lstm, x, lengths, path)
        return
    check(run(lstm, x, lengths, path), gold(lstm, x, lengths))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("H", [1, 31, 64, 520])
def test_hidden_sizes_and_large_batch(path, H):
    lstm, x, lengths = case(24, H, 1, True, True, 300, 17, seed=H)
    if path == "persistent" and not persistent_fits(H):
        pytest.skip("weights do not fit on chip on this GPU")
    check(run(lstm, x, lengths, path), gold(lstm, x, lengths))


@pytest.mark.parametrize("path", ["auto", "per_step"])
def test_long_sequences(path):
    lstm, x, lengths = case(32, 96, 2, True, True, 6, 400)
    check(run(lstm, x, lengths, path), gold(lstm, x, lengths), rtol=1e-5, atol=5e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("path", PATHS)
def test_reduced_precision(dtype, path):
    lstm, x, lengths = case(40, 64, 2, True, True, 9, 15)
    if path == "persistent" and not persistent_fits(64):
        pytest.skip("weights do not fit on chip on this GPU")
    xr = x.to(dtype)
    out, h, c = run(lstm, xr, lengths, path)
    assert out.dtype == h.dtype == c.dtype == dtype
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=2e-3)
    check((out, h, c), gold(lstm, xr.float(), lengths), **tol)


def test_packed_sequence_and_padding():
    lstm, x, lengths = case(12, 40, 2, True, True, 7, 11)
    fast = FastBiLSTM.from_lstm(copy.deepcopy(lstm).cuda())
    packed = pack_padded_sequence(x.cuda(), lengths, batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        out, (h, c) = fast(packed)
        padded, _ = fast(x.cuda(), lengths)
    assert isinstance(out, PackedSequence)
    want_out, want_h, want_c = gold(lstm, x, lengths)
    got_out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    check((got_out, h, c), (want_out, want_h, want_c))
    for b, n in enumerate(lengths.tolist()):
        assert torch.all(padded[b, n:] == 0)


def test_side_stream_empty_batch_and_tokens():
    lstm, x, lengths = case(10, 20, 1, True, True, 4, 6)
    fast = FastBiLSTM.from_lstm(copy.deepcopy(lstm).cuda())
    side = torch.cuda.Stream()
    with torch.no_grad(), torch.cuda.stream(side):
        # The input is produced on the side stream just before the call: a kernel launched on another stream
        # could read it before it is written.
        torch.cuda._sleep(10_000_000)
        x_side = x.cuda(non_blocking=False) * 1.0
        out, (h, c) = fast(x_side, lengths)
    side.synchronize()
    check((out, h, c), gold(lstm, x, lengths))
    with torch.no_grad():
        out, (h, c) = fast(torch.randn(0, 5, 10, device="cuda"), torch.zeros(0, dtype=torch.int64))
    assert out.shape == (0, 5, 40) and h.shape == (2, 0, 20)
    emb = nn.Embedding(30, 10)
    ids = torch.randint(0, 30, (4, 6))
    with torch.no_grad():
        fast.precompute_embedding_table(emb.weight.cuda())
        got_out, (got_h, got_c) = fast(ids.cuda(), lengths)
        want = gold(lstm, emb(ids), lengths)   # nn.LSTM on the CPU, on the gathered embeddings
    check((got_out, got_h, got_c), want)
