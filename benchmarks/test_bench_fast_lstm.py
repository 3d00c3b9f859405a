"""Inference time of FastBiLSTM against nn.LSTM (padded and packed), one pytest-benchmark group per config.

Bidirectional LSTM, E = 300, T = 64 (all lengths equal) or SST-2-like lengths (see lstm_throughput.py, which
also writes the JSON/PNG report). Run: ``pytest benchmarks/test_bench_fast_lstm.py``.
"""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import mkd_fast
from mkd_fast.kernels import lstm_cuda
from conftest import DEVICE
from lstm_throughput import sst2_lengths

HIDDEN = [150, 300]
BATCH = [1, 8, 64, 512]
LENGTHS = ["T64", "sst2"]
IMPLS = ["fast", "padded", "packed"]


def _inputs(hidden, batch, lengths_kind):
    gen = torch.Generator().manual_seed(batch)
    if lengths_kind == "sst2":
        sst2, _ = sst2_lengths()
        pick = torch.randint(0, len(sst2), (batch,), generator=gen)
        lengths = torch.tensor([sst2[i] for i in pick.tolist()], dtype=torch.int64)
    else:
        lengths = torch.full((batch,), 64, dtype=torch.int64)
    x = torch.randn(batch, int(lengths.max()), 300, generator=gen).to(DEVICE)
    torch.manual_seed(hidden)
    lstm = nn.LSTM(300, hidden, bidirectional=True, batch_first=True).to(DEVICE).eval()
    return lstm, x, lengths


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("lengths_kind", LENGTHS)
@pytest.mark.parametrize("batch", BATCH)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_bilstm_inference(benchmark, hidden, batch, lengths_kind, impl):
    if DEVICE == "cuda" and impl == "fast" and not lstm_cuda.available():
        pytest.skip("mkd_fast._C_cuda has no LSTM kernels")
    lstm, x, lengths = _inputs(hidden, batch, lengths_kind)
    fast = mkd_fast.FastBiLSTM.from_lstm(lstm)
    T = x.shape[1]

    def packed():
        p = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(lstm(p)[0], batch_first=True, total_length=T)[0]

    fn = {"fast": lambda: fast(x, lengths), "padded": lambda: lstm(x), "packed": packed}[impl]

    def run():
        with torch.inference_mode():
            fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"bilstm H={hidden} B={batch} {lengths_kind}"
    rounds = 20 if batch <= 8 else (5 if batch <= 64 else 2)
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
