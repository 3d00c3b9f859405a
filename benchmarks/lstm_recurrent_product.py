"""Which is faster for the per-step recurrent product of the CPU LSTM: a library GEMM per step, or the
register-tiled micro-kernel of csrc/cpu/lstm_cpu_kernel.cpp?

Both variants run one direction of one layer over T steps, single-threaded. The "mm" variant: per step
at::addmm_out(gates, gx_t, h, W_hh^T) on the whole batch as one tile, then a vectorised gate pass (ATen's
exp/tanh), timed also without the gate pass (products only: a lower bound). The "micro" variant: FastBiLSTM
with a 1-feature input (its input GEMM is negligible), products and gates included. Compiles a small helper extension on first run (about a minute).

    python benchmarks/lstm_recurrent_product.py            # prints a table, writes results/lstm_recurrent_product.json
"""
import json
import os
import time

import torch
from torch.utils.cpp_extension import load_inline

import mkd_fast

CPP = r"""
#include <torch/extension.h>
#include <ATen/cpu/vec/vec.h>
#include <chrono>
using VecF = at::vec::Vectorized<float>;

static VecF sig(VecF x) { return VecF(1.f) / (VecF(1.f) + (VecF(0.f) - x).exp()); }

// Seconds for T steps of: gates = gx[t] + h @ W^T (at::addmm_out), then the gate math and state update.
// With gate_math false only the products run (a lower bound of the library variant).
double mm_steps(at::Tensor gx, at::Tensor wt, int64_t reps, bool gate_math) {
  const int64_t T = gx.size(0), B = gx.size(1), H = wt.size(0);
  at::Tensor h = at::zeros({B, H}), c = at::zeros({B, H}), gates = at::empty({B, 4 * H});
  double best = 1e30;
  for (int64_t rep = 0; rep < reps; ++rep) {
    h.zero_(); c.zero_();
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t t = 0; t < T; ++t) {
      at::addmm_out(gates, gx[t], h, wt);
      if (!gate_math) continue;
      float* g = gates.data_ptr<float>(); float* hp = h.data_ptr<float>(); float* cp = c.data_ptr<float>();
      for (int64_t r = 0; r < B; ++r) {
        const float* gr = g + r * 4 * H;
        for (int64_t u = 0; u < H; u += VecF::size()) {
          const int n = static_cast<int>(std::min<int64_t>(VecF::size(), H - u));
          VecF i = sig(VecF::loadu(gr + u, n)), f = sig(VecF::loadu(gr + H + u, n));
          VecF gg = VecF::loadu(gr + 2 * H + u, n).tanh(), o = sig(VecF::loadu(gr + 3 * H + u, n));
          VecF cn = f * VecF::loadu(cp + r * H + u, n) + i * gg;
          cn.store(cp + r * H + u, n);
          (o * cn.tanh()).store(hp + r * H + u, n);
        }
      }
    }
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}
"""


def micro_seconds(batch, hidden, steps, reps):
    lstm = torch.nn.LSTM(1, hidden, bidirectional=False, batch_first=True)
    fast = mkd_fast.FastBiLSTM.from_lstm(lstm)
    x = torch.randn(batch, steps, 1)
    lengths = torch.full((batch,), steps)
    best = float("inf")
    with torch.inference_mode():
        fast(x, lengths)
        for _ in range(reps):
            t0 = time.perf_counter()
            fast(x, lengths)
            best = min(best, time.perf_counter() - t0)
    return best


def main():
    torch.set_num_threads(1)
    ext = load_inline("mkd_lstm_mm_bench", CPP, functions=["mm_steps"], extra_cflags=["-O3"], verbose=False)
    steps, rows = 64, []
    for hidden in (150, 300):
        for batch in (1, 8, 64, 512):
            reps = 10 if batch <= 64 else 3
            gx = torch.randn(steps, batch, 4 * hidden)
            wt = torch.randn(hidden, 4 * hidden) * 0.05
            mm = ext.mm_steps(gx, wt, reps, True)
            mm_only = ext.mm_steps(gx, wt, reps, False)
            micro = micro_seconds(batch, hidden, steps, reps)
            rows.append({"hidden": hidden, "batch": batch, "mm_with_gates_ms": mm * 1e3, "mm_only_ms": mm_only * 1e3,
                         "micro_ms": micro * 1e3, "micro_speedup_vs_mm_only": mm_only / micro})
            print(f"H={hidden:4d} B={batch:4d}  at::addmm per step: {mm * 1e3:8.2f} ms with gates, {mm_only * 1e3:8.2f} "
                  f"ms products only;  micro-kernel (products + gates) {micro * 1e3:8.2f} ms: "
                  f"x{mm_only / micro:.2f} vs products only", flush=True)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "lstm_recurrent_product.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"threads": 1, "steps": steps, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
