"""Every GPU check and benchmark of the fused losses in one run; writes benchmarks/results/gpu_<gpu>.json.

On a GPU machine, from the repository root:

    pip install --no-build-isolation --no-deps -e .    # builds mkd_fast._C and mkd_fast._C_cuda
    python benchmarks/run_gpu.py [--out DIR]

It records: the test suite's outcome on the GPU (tests/test_gpu_backends.py and the rest), the device's
measured copy bandwidth, and for each benchmark shape the forward+backward time of every implementation,
its speed-up over eager / torch.compile / Liger, its share of the copy bandwidth (bytes = read student +
read teacher + write gradient), and the extra peak memory.  Liger-Kernel is used when importable (carry
its wheel to an offline machine: see benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from summarize import markdown, plot, summarize  # noqa: E402


def _run(cmd, **kw):
    print("+", " ".join(cmd), flush=True)
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, **kw)
    print(proc.stdout[-6000:], proc.stderr[-3000:], sep="\n", flush=True)
    return proc, time.time() - start


def copy_bandwidth_gbs(torch) -> float:
    """Device-to-device copy bandwidth (read + write bytes / time), best of 10, 2 GiB buffers."""
    n = 2 ** 31 // 4
    a = torch.empty(n, device="cuda", dtype=torch.float32).fill_(1.0)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        b.copy_(a)
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    del a, b
    return 2 * n * 4 / best / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    os.environ["TRITON_INTERPRET"] = "0"

    import torch
    import triton

    import mkd_fast

    assert torch.cuda.is_available(), "run_gpu.py needs a CUDA GPU"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True, capture_output=True).stdout.strip()
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                  triton=triton.__version__, python=platform.python_version(), commit=commit or "unknown",
                  backends={k: dict(available=v.available, reason=v.reason) for k, v in mkd_fast.backends().items()})
    print(json.dumps(result, indent=1), flush=True)

    if not args.skip_tests:
        # The GPU tests first and on their own, so that nothing else can stop them; then the whole suite.
        for name, target in (("gpu_tests", "tests/test_gpu_backends.py"), ("lstm_gpu_tests", "tests/test_fast_lstm_gpu.py"),
                             ("tests", "tests")):
            proc, seconds = _run([sys.executable, "-m", "pytest", "-q", target, "-p", "no:cacheprovider"])
            tail = [line for line in proc.stdout.splitlines() if " passed" in line or " failed" in line]
            result[name] = dict(returncode=proc.returncode, summary=tail[-1] if tail else "", seconds=round(seconds))

    result["copy_bandwidth_GBps"] = copy_bandwidth_gbs(torch)
    raw = os.path.join(args.out, "gpu_benchmark_raw.json")
    proc, seconds = _run([sys.executable, "-m", "pytest", "-q", "benchmarks/test_bench_kd_loss.py", "-p",
                          "no:cacheprovider", f"--benchmark-json={raw}", "--benchmark-columns=median,min"])
    result["benchmark_returncode"] = proc.returncode
    # FastBiLSTM vs cuDNN and the student comparison write their own JSON/PNG (lstm_cuda.*, student_throughput_cuda.*).
    for name, script in (("lstm_benchmark", ["benchmarks/lstm_throughput.py", "--device", "cuda",
                                             "--batches", "1,8,64,512,4096",
                                             "--dtypes", "float32,tf32,float16,bfloat16"]),
                         ("student_benchmark", ["benchmarks/student_throughput.py", "--device", "cuda",
                                                "--batch-sizes", "1", "8", "64", "512", "4096"])):
        proc, seconds = _run([sys.executable, *script])
        result[name] = dict(returncode=proc.returncode, seconds=round(seconds),
                            tail=proc.stdout[-3000:] + proc.stderr[-2000:])
    if os.path.exists(raw):
        with open(raw) as f:
            result["benchmarks"] = summarize(json.load(f), result["copy_bandwidth_GBps"])
        with open(os.path.join(args.out, "gpu_summary.md"), "w") as f:
            f.write(markdown(result["benchmarks"]) + "\n")
        plot(result["benchmarks"], os.path.join(args.out, "gpu_speedup.png"), result["device"])
    name = "gpu_" + "".join(ch if ch.isalnum() else "_" for ch in result["device"]).strip("_").lower() + ".json"
    path = os.path.join(args.out, name)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, path)
    print("wrote", path)
    for row in result.get("benchmarks", []):
        print(f"{row['n']:>6}x{row['c']:<7} {row['dtype']:<15} {row['impl']:<16} {row['median_ms']:9.3f} ms "
              f"{row.get('pct_copy_bandwidth', 0):6.1f}% bw  " +
              " ".join(f"{k[11:]} {v:5.2f}x" for k, v in row.items() if k.startswith("speedup_vs_")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
