"""Turns a pytest-benchmark JSON of test_bench_kd_loss.py into ratio tables and a PNG.

    python benchmarks/summarize.py benchmarks/results/cpu_latest.json   # -> cpu_summary.md / .png

Ratios (speed-up over eager, torch.compile, Liger) come from one run, side by side, because absolute times
on shared machines drift from run to run.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional

BASELINES = ("eager", "compile", "liger")


def summarize(bench_json: dict, bandwidth_gbs: Optional[float] = None) -> list:
    groups = {}
    for bench in bench_json["benchmarks"]:
        info = bench["extra_info"]
        if "n" not in info:  # not a loss benchmark (FastBiLSTM, students): reported by their own scripts
            continue
        key = (info["n"], info["c"], info["dtype"].replace("torch.", ""))
        groups.setdefault(key, {})[info["impl"]] = (bench["stats"]["median"], info)
    rows = []
    for (n, c, dtype), impls in sorted(groups.items()):
        for impl, (seconds, info) in sorted(impls.items()):
            row = dict(n=n, c=c, dtype=dtype, impl=impl, median_ms=round(seconds * 1e3, 4),
                       effective_GBps=round(info["bytes_min"] / seconds / 1e9, 2))
            if bandwidth_gbs:
                row["pct_copy_bandwidth"] = round(100 * row["effective_GBps"] / bandwidth_gbs, 1)
            if "peak_extra_bytes" in info:
                row["peak_extra_MiB"] = round(info["peak_extra_bytes"] / 2 ** 20, 1)
            for base in BASELINES:
                if base in impls and impl != base:
                    row[f"speedup_vs_{base}"] = round(impls[base][0] / seconds, 2)
            rows.append(row)
    return rows


def markdown(rows: list) -> str:
    cols = ["n", "c", "dtype", "impl", "median_ms", "effective_GBps"]
    cols += [k for k in ("pct_copy_bandwidth", "peak_extra_MiB") if any(k in r for r in rows)]
    cols += [f"speedup_vs_{b}" for b in BASELINES if any(f"speedup_vs_{b}" in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k in cols) + " |")
    return "\n".join(lines)


def plot(rows: list, path: str, title: str) -> bool:
    """Bar chart of each implementation's time relative to eager, per shape (log scale)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shapes = sorted({(r["n"], r["c"], r["dtype"]) for r in rows})
    impls = sorted({r["impl"] for r in rows if r["impl"] != "eager"})
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(shapes)), 4))
    width = 0.8 / max(1, len(impls))
    for i, impl in enumerate(impls):
        values = []
        for shape in shapes:
            match = [r for r in rows if (r["n"], r["c"], r["dtype"]) == shape and r["impl"] == impl]
            values.append(match[0].get("speedup_vs_eager", 0) if match else 0)
        ax.bar([j + i * width for j in range(len(shapes))], values, width, label=impl)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
    ax.set_xticklabels([f"{n}x{c}\n{d}" for n, c, d in shapes], fontsize=8)
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("speed-up over eager PyTorch (x)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv) -> int:
    src = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(__file__), "results", "cpu_latest.json")
    with open(src) as f:
        data = json.load(f)
    rows = summarize(data)
    stem = os.path.join(os.path.dirname(src), os.path.basename(src).replace("_latest.json", "").replace(".json", ""))
    machine = data.get("machine_info", {})
    device = machine.get("device", "?")
    if device == "cpu":
        device = machine.get("cpu", {}).get("brand_raw", device)
    header = (f"KD loss forward+backward, {device}, {machine.get('threads', '?')} threads, "
              f"torch {machine.get('torch', '?')}, commit {machine.get('commit', '?')[:10]}")
    with open(stem + "_summary.md", "w") as f:
        f.write(header + "\n\n" + markdown(rows) + "\n")
    with open(stem + "_summary.json", "w") as f:
        json.dump(dict(machine_info=machine, rows=rows), f, indent=1)
    drew = plot(rows, stem + "_speedup.png", "KD loss fwd+bwd: speed-up over eager")
    print(header)
    print(markdown(rows))
    print("wrote", stem + "_summary.md", "and", stem + "_speedup.png" if drew else "(no matplotlib: no PNG)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
