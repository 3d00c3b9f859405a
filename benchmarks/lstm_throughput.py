"""Throughput of FastBiLSTM against nn.LSTM (padded, and packed: the semantics FastBiLSTM reproduces).

Bidirectional 1-layer LSTM, E = 300, hidden 150 and 300, batch 1, 8, 64, 512 (4096 with --batches), fixed
lengths T = 32, 64, 128 and an SST-2-like length distribution (whitespace tokens of GLUE SST-2 train.tsv when
found, else a fixed sample; T = the longest sequence of the batch). Inference: torch.inference_mode().

Implementations, timed interleaved (one call of each per round, so machine load hits all alike):
  fast    FastBiLSTM(x, lengths)                                  -> padded output, packed semantics
  padded  nn.LSTM(x)                                              (ignores lengths: what many models run)
  packed  pad_packed_sequence(nn.LSTM(pack_padded_sequence(x, lengths, enforce_sorted=False)))
Reported per config: median seconds per call of each, and the speed-ups as the median over rounds of the
per-round ratio (robust when other jobs share the cores). Writes JSON (device, versions, git commit) and a
PNG of throughput (sequences/s) against batch.

Roofline: the run also measures the machine's matrix-multiply rate (torch.mm of 2048^3 on one CPU thread times
the thread count; 8192^3 on the GPU; in the timed dtype) before and after the configs and keeps the faster.  Each config then
reports the useful work (multiply-adds of the real tokens: input projection + recurrent product, both
directions) as a % of that rate for every implementation, and the largest speed-up over nn.LSTM that any
kernel doing that work could reach (nn.LSTM's time / the work at the GEMM rate).  A speed-up goal above that
bound cannot be met by a faster kernel, only by doing less work.

    python benchmarks/lstm_throughput.py                       # -> benchmarks/results/lstm_cpu.{json,png}
    python benchmarks/lstm_throughput.py --batches 1,8,64,512,4096 --steps 64 --budget 20
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import statistics
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import mkd_fast
from run_info import cpu_name, git_commit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SST2 = os.path.join(ROOT, "..", "shared", "data", "glue", "SST-2", "train.tsv")
# Used when SST-2 is not on disk: 40 whitespace-token lengths drawn from SST-2 train (mean ~9, max 52).
SST2_FALLBACK = [7, 6, 34, 4, 11, 3, 12, 2, 18, 5, 9, 1, 24, 6, 3, 15, 8, 2, 27, 10,
                 4, 13, 7, 2, 21, 5, 9, 3, 52, 6, 14, 4, 8, 2, 19, 11, 3, 6, 30, 5]


def sst2_lengths():
    """(lengths, source): whitespace-token counts of SST-2 train sentences."""
    try:
        with open(SST2, encoding="utf-8") as f:
            next(f)  # header
            lengths = [max(1, len(line.split("\t")[0].split())) for line in f if line.strip()]
        return lengths, os.path.normpath(SST2)
    except OSError:
        return SST2_FALLBACK, "fixed fallback sample (SST-2 train.tsv not found)"


def implementations(lstm, fast, x, lengths):
    T = x.shape[1]

    def packed():
        p = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, state = lstm(p)
        return pad_packed_sequence(out, batch_first=True, total_length=T)[0], state

    return {"fast": lambda: fast(x, lengths), "padded": lambda: lstm(x), "packed": packed}


def measure(impls, budget_s, min_rounds, max_rounds, sync):
    """Interleaved rounds until the time budget is spent; per-implementation seconds of every round."""
    times = {name: [] for name in impls}
    for fn in impls.values():  # warm-up (weight packing, allocator, oneDNN primitive caches)
        fn()
        sync()
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (rounds < max_rounds and time.perf_counter() - start < budget_s):
        for name, fn in impls.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return times


def gemm_rate(device, dtype, sync, seconds=1.0):
    """Floating-point operations per second of a large torch.mm in `dtype`: the attainable compute peak.

    On CPU the product runs on one thread and the rate is scaled by the thread count (a multi-threaded GEMM
    pays for its own synchronisation, which would understate what the cores can do); on GPU it uses the
    whole device.  The fastest of the calls within `seconds` counts.
    """
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        torch.mm(a, b)
        sync()
        best, start = float("inf"), time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync()
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return 2 * n ** 3 / best * (threads if device.type == "cpu" else 1)


def useful_flops(tokens, hidden, features=300, directions=2):
    """Floating-point operations an LSTM layer must do on `tokens` real tokens (packed semantics)."""
    return 2 * tokens * directions * (features * 4 * hidden + hidden * 4 * hidden)


def add_roofline(row, flops, peak):
    """% of the GEMM rate per implementation and the largest speed-up over nn.LSTM the work allows."""
    floor_s = flops / peak
    row["useful_gflop"] = flops / 1e9
    row["gemm_rate_gflops"] = peak / 1e9
    for name in ("fast", "padded", "packed"):
        row[f"{name}_pct_of_gemm_rate"] = 100 * floor_s / row[f"{name}_s"]
    for base in ("padded", "packed"):
        row[f"max_speedup_vs_{base}"] = row[f"{base}_s"] / floor_s
    return row


def summarize(times, batch, tokens):
    med = {name: statistics.median(ts) for name, ts in times.items()}
    row = {f"{name}_s": med[name] for name in times}
    row.update({f"{name}_seq_per_s": batch / med[name] for name in times})
    row["tokens"] = tokens
    row["rounds"] = len(times["fast"])
    for base in ("padded", "packed"):
        ratios = [b / f for b, f in zip(times[base], times["fast"])]
        row[f"speedup_vs_{base}"] = statistics.median(ratios)
    return row


DTYPES = {"float32": torch.float32, "tf32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("dtype", "float32") == rows[0].get("dtype", "float32")]  # first dtype only
    hiddens = sorted({r["hidden"] for r in rows})
    fig, axes = plt.subplots(1, len(hiddens), figsize=(6 * len(hiddens), 4.5), squeeze=False)
    styles = {"fast": ("tab:red", "FastBiLSTM"), "padded": ("tab:blue", "nn.LSTM padded"),
              "packed": ("tab:green", "nn.LSTM packed")}
    for ax, hidden in zip(axes[0], hiddens):
        for lengths, dash in (("T=64", "-"), ("sst2", "--")):
            sel = sorted((r for r in rows if r["hidden"] == hidden and r["lengths"] == lengths),
                         key=lambda r: r["batch"])
            if not sel:
                continue
            for impl, (color, label) in styles.items():
                ax.plot([r["batch"] for r in sel], [r[f"{impl}_seq_per_s"] for r in sel], dash, color=color,
                        marker="o", label=f"{label}, {lengths}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("sequences / s")
        ax.set_title(f"BiLSTM E=300 H={hidden}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", default="1,8,64,512")
    ap.add_argument("--steps", default="32,64,128", help="fixed lengths T (comma list)")
    ap.add_argument("--hidden", default="150,300")
    ap.add_argument("--dtypes", default="float32",
                    help="comma list of float32, tf32 (CUDA: float32 storage, TF32 math allowed), float16, bfloat16")
    ap.add_argument("--no-sst2", action="store_true", help="skip the SST-2 length distribution")
    ap.add_argument("--budget", type=float, default=4.0, help="seconds of timing per config (after warm-up)")
    ap.add_argument("--min-rounds", type=int, default=3)
    ap.add_argument("--max-rounds", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/lstm_<device>)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    stem = args.out or os.path.join(HERE, "results", f"lstm_{device.type}")
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    sst2, sst2_source = sst2_lengths()
    gen = torch.Generator().manual_seed(0)
    configs = [(f"T={t}", t) for t in map(int, args.steps.split(","))] + ([] if args.no_sst2 else [("sst2", None)])
    rows = []
    dtypes = args.dtypes.split(",")
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        ap.error(f"--dtypes: unknown {unknown}; expected some of {sorted(DTYPES)}")
    peaks = {}
    with torch.inference_mode():
        for hidden, dtype_name in itertools.product(map(int, args.hidden.split(",")), dtypes):
            torch.manual_seed(hidden)
            if device.type == "cuda":  # TF32 only where asked for, for cuDNN and for our GEMMs alike
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = dtype_name == "tf32"
            dtype = DTYPES[dtype_name]
            lstm = nn.LSTM(300, hidden, bidirectional=True, batch_first=True).to(device, dtype).eval()
            fast = mkd_fast.FastBiLSTM.from_lstm(lstm)
            if dtype_name not in peaks:
                peaks[dtype_name] = gemm_rate(device, dtype, sync)
            for name, steps in configs:
                for batch in map(int, args.batches.split(",")):
                    if steps is None:
                        pick = torch.randint(0, len(sst2), (batch,), generator=gen)
                        lengths = torch.tensor([sst2[i] for i in pick.tolist()], dtype=torch.int64)
                    else:
                        lengths = torch.full((batch,), steps, dtype=torch.int64)
                    T = int(lengths.max())
                    x = torch.randn(batch, T, 300, generator=gen).to(device, dtype)
                    times = measure(implementations(lstm, fast, x, lengths), args.budget, args.min_rounds,
                                    args.max_rounds, sync)
                    row = {"hidden": hidden, "dtype": dtype_name, "lengths": name, "batch": batch, "T": T,
                           **summarize(times, batch, int(lengths.sum()))}
                    add_roofline(row, useful_flops(int(lengths.sum()), hidden), peaks[dtype_name])
                    rows.append(row)
                    print(f"{dtype_name:8s} H={hidden:3d} {name:6s} B={batch:5d} T={T:3d}: fast {row['fast_s'] * 1e3:9.2f} ms  "
                          f"padded {row['padded_s'] * 1e3:9.2f} ms  packed {row['packed_s'] * 1e3:9.2f} ms  "
                          f"x{row['speedup_vs_padded']:.2f} vs padded, x{row['speedup_vs_packed']:.2f} vs packed "
                          f"({row['rounds']} rounds); % of GEMM rate: fast {row['fast_pct_of_gemm_rate']:.0f} "
                          f"padded {row['padded_pct_of_gemm_rate']:.0f}, bound x{row['max_speedup_vs_padded']:.2f}",
                          flush=True)
        # The rate measured again after the configs; the faster of the two measurements is the peak.
        for dtype_name in dtypes:
            if device.type == "cuda":
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = dtype_name == "tf32"
            again = gemm_rate(device, DTYPES[dtype_name], sync)
            if again > peaks[dtype_name]:
                peaks[dtype_name] = again
                for row in rows:
                    if row["dtype"] == dtype_name:
                        add_roofline(row, row["useful_gflop"] * 1e9, again)
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp default)"),
        "torch": torch.__version__,
        "mkd_fast": mkd_fast.__version__,
        "cpu_kernels": mkd_fast.backends()["cpu"].reason,
        "git_commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": "nn.LSTM(300, H, bidirectional=True, batch_first=True), 1 layer, inference_mode",
        "sst2_lengths": sst2_source,
        "timing": "interleaved rounds; *_s = median seconds per call; speedup = median of per-round ratios",
        "gemm_rate_gflops": {k: v / 1e9 for k, v in peaks.items()},
        "roofline": "useful work = 2 * real tokens * directions * (E * 4H + H * 4H) flop; *_pct_of_gemm_rate = that "
                    "work at the GEMM rate / the time; max_speedup_vs_* = nn.LSTM time / that work at the GEMM rate",
    }
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=1)
    plot(rows, stem + ".png", f"{meta['device']}, {meta['threads']} threads, torch {meta['torch']}, "
                              f"commit {meta['git_commit'][:10]}")
    print("wrote", stem + ".json", stem + ".png")


if __name__ == "__main__":
    main()
