// LSTM layer on the CPU: per task (direction, tile of rows) a chunked input projection, then the recurrence
// with fused gates and a register-tiled recurrent product.
//
// Why it is shaped like this (layouts in lstm_cpu_kernel.h):
// - Rows of a batch are independent through time, so a task (direction, tile of rows) runs all its time
//   steps alone: a whole layer is one parallel region (no barrier per step, none between the projection
//   and the recurrence), both directions and all tiles run in parallel.  Under load from other processes
//   every extra parallel region can cost a scheduler time slice, so fewer regions also means steadier times.
// - A task projects its input a time chunk at a time (one GEMM per chunk, the caller's `project`, e.g.
//   at::addmm = MKL, single-threaded inside the region) into a buffer sized to stay in cache (2 MB), and
//   the recurrence consumes it right away instead of reading a [B*T, 4H] buffer back from memory.
// - The per-step product h_{t-1} @ W_hh^T is small (m x H times H x 4H), so a micro-kernel keeps kRowBlock
//   rows x 4 gates x V units of accumulators in registers, streams W_hh once per row block and applies the
//   gate non-linearities before anything leaves the registers.  Measured against at::addmm per step
//   (1 thread, E = 300, T = 64, AMD EPYC AVX-512): as the product of each tile (in place into the gate
//   buffer, then the same gate pass) it was slower at every batch: H = 150, B = 8: 9.8 vs 6.9 ms, B = 64:
//   57.8 vs 54.6 ms, B = 512: 504-538 vs 452-460 ms (tiles of 48-256 rows); H = 300, B = 512: 1216 vs
//   1117 ms.  benchmarks/lstm_recurrent_product.py compares one-direction recurrences on their own.
// - Rows are sorted by length (longest first), so the active rows of a step are a prefix: no work is spent
//   on padding, a tile simply shrinks (forward) or grows (backward) over time.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "lstm_cpu_kernel.h"

namespace mkd_fast {
namespace cpu {
namespace {

using VecF = at::vec::Vectorized<float>;
using VecI = at::vec::Vectorized<int32_t>;
constexpr int64_t kV = VecF::size();

// Rows sharing each weight load: 4 * kRowBlock accumulators + 4 weights must fit the vector registers.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kRowBlock = 6;  // 24 + 4 of 32 zmm
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kRowBlock = 3;  // 12 + 4 of 16 ymm (weights loaded one gate at a time)
#else
constexpr int kRowBlock = 2;
#endif
constexpr int64_t kMaxTileRows = 48;  // keeps a tile's h and c (3 x 48 x Hp floats) near L1/L2
constexpr int64_t kTasksPerThread = 3;
constexpr int64_t kMinTileRows = 4;
// Gate buffer of a task's time chunk: small enough to stay in L2/L3 between the GEMM that writes it and the
// recurrence that reads it, large enough for an efficient GEMM (rows = tile x chunk steps).
constexpr int64_t kChunkBytes = int64_t(2) << 20;

// exp(x) for x <= 0 (inputs below -86 give exp(-86) ~ 4e-38, NaN stays NaN).  Cody-Waite reduction
// x = n ln2 + r, |r| <= ln2 / 2, then the degree-7 Taylor polynomial of e^r (truncation < 6e-9) and
// 2^n put into the exponent bits.  Measured against double on 2^24 points (AVX-512 build): max relative
// error 7.9e-8 on [-86, 0]; the sigmoid below 2.0e-7 on [-90, 90], the tanh 1.9e-7 on [-20, 20] (its
// largest error sits just above the series/exp switch at 0.25).
inline VecF exp_nonpositive(VecF x) {
  x = at::vec::maximum(x, VecF(-86.f));
  const VecF n = (x * VecF(1.44269504088896341f)).round();
  VecF r = at::vec::fmadd(n, VecF(-0.693145751953125f), x);  // ln2 split in a 16-bit-exact high part
  r = at::vec::fmadd(n, VecF(-1.428606765330187e-06f), r);   // and the rest
  VecF p(1.f / 5040.f);
  p = at::vec::fmadd(p, r, VecF(1.f / 720.f));
  p = at::vec::fmadd(p, r, VecF(1.f / 120.f));
  p = at::vec::fmadd(p, r, VecF(1.f / 24.f));
  p = at::vec::fmadd(p, r, VecF(1.f / 6.f));
  p = at::vec::fmadd(p, r, VecF(0.5f));
  p = at::vec::fmadd(p, r, VecF(1.f));
  p = at::vec::fmadd(p, r, VecF(1.f));
  const VecI bits = (at::vec::convert_to_int_of_same_size(n) + VecI(127)) << VecI(23);  // 2^n, n >= -125
  return p * at::vec::cast<float>(bits);
}

// 1 / (1 + e^-x) from e = e^-|x| <= 1 (no overflow; for x < 0 it is e / (1 + e), no cancellation).
inline VecF sigmoid(const VecF& x) {
  const VecF e = exp_nonpositive(VecF(0.f) - x.abs());
  const VecF s = VecF(1.f) / (VecF(1.f) + e);
  return VecF::blendv(e * s, s, x >= VecF(0.f));
}

// tanh: (1 - e) / (1 + e) with e = e^-2|x|, sign restored; below |x| = 0.25, where 1 - e cancels, the odd
// Taylor series to x^9 (truncation < 1e-8 relative).
inline VecF tanh_fast(const VecF& x) {
  const VecF a = x.abs();
  const VecF e = exp_nonpositive(VecF(-2.f) * a);
  const VecF t = (VecF(1.f) - e) / (VecF(1.f) + e);
  const VecF large = VecF::blendv(t, VecF(0.f) - t, x < VecF(0.f));
  const VecF x2 = x * x;
  VecF p(62.f / 2835.f);
  p = at::vec::fmadd(p, x2, VecF(-17.f / 315.f));
  p = at::vec::fmadd(p, x2, VecF(2.f / 15.f));
  p = at::vec::fmadd(p, x2, VecF(-1.f / 3.f));
  const VecF small = at::vec::fmadd(x * x2, p, x);
  return VecF::blendv(large, small, a < VecF(0.25f));
}

// The first `count` lanes of v stored as E (count <= V).
template <typename E>
inline void store_out(E* dst, const VecF& v, int64_t count) {
  if constexpr (std::is_same<E, float>::value) {
    if (count == kV) {
      v.store(dst);
    } else {
      v.store(dst, static_cast<int>(count));
    }
  } else {
    alignas(64) float buf[kV];
    v.store(buf);
    for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<E>(buf[i]);
  }
}

template <typename S>
inline void store_state(void* base, int64_t offset, const float* src, int64_t n) {
  S* dst = static_cast<S*>(base) + offset;
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<S>(src[i]);
}

void store_state_any(int32_t type, void* base, int64_t offset, const float* src, int64_t n) {
  switch (type) {
    case kBFloat16: store_state<c10::BFloat16>(base, offset, src, n); break;
    case kFloat16: store_state<c10::Half>(base, offset, src, n); break;
    default: store_state<float>(base, offset, src, n); break;
  }
}

// Gate math and state update of mr rows of one block from their pre-activations pre[r][g][V]:
//   c[r] = sigmoid(f) * c[r] + sigmoid(i) * tanh(g);  h_next[r] = sigmoid(o) * tanh(c[r]);  out[r] = h_next[r]
// Kept out of line on purpose: inlined into the product loop, its ~15 constants were hoisted into vector
// registers and pushed the accumulators onto the stack (measured: spills in every k iteration).
template <typename E>
__attribute__((noinline)) void gate_rows(const float* pre, int mr, float* __restrict c,
                                         float* __restrict h_next, int64_t ld, E* const* out, int64_t out_count) {
  for (int r = 0; r < mr; ++r) {
    const float* p = pre + r * 4 * kV;
    const VecF i = sigmoid(VecF::loadu(p));
    const VecF f = sigmoid(VecF::loadu(p + kV));
    const VecF g = tanh_fast(VecF::loadu(p + 2 * kV));
    const VecF o = sigmoid(VecF::loadu(p + 3 * kV));
    const VecF c_new = at::vec::fmadd(f, VecF::loadu(c + r * ld), i * g);
    const VecF h_new = o * tanh_fast(c_new);
    c_new.store(c + r * ld);
    h_new.store(h_next + r * ld);
    store_out<E>(out[r], h_new, out_count);
  }
}

// One step for MR rows and the V hidden units of one block: pre[r][g] = gx[r][g] + sum_k h[r][k] * w[k][g],
// accumulated in 4 * MR vector registers, then gate_rows.
// gx: MR rows of stride gx_ld holding this block's 4 gates of `count` units each (count <= V; lanes beyond
// are zero, so those padding units stay 0); h, c, h_next: MR rows of stride ld.
template <int MR, typename E>
inline void block_rows(const float* __restrict w, int64_t H, const float* __restrict gx, int64_t gx_ld,
                       const float* __restrict h, float* __restrict c, float* __restrict h_next, int64_t ld,
                       E* const* out, int64_t count) {
  VecF acc[MR][4];
  if (count == kV) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) acc[r][g] = VecF::loadu(gx + r * gx_ld + g * kV);
    }
  } else {
    for (int r = 0; r < MR; ++r) {
      for (int g = 0; g < 4; ++g) acc[r][g] = VecF::loadu(gx + r * gx_ld + g * count, static_cast<int>(count));
    }
  }
  for (int64_t k = 0; k < H; ++k) {
    const float* wk = w + k * 4 * kV;
#if defined(CPU_CAPABILITY_AVX512)
    const VecF w0 = VecF::loadu(wk), w1 = VecF::loadu(wk + kV), w2 = VecF::loadu(wk + 2 * kV),
               w3 = VecF::loadu(wk + 3 * kV);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const VecF hk(h[r * ld + k]);
      acc[r][0] = at::vec::fmadd(hk, w0, acc[r][0]);
      acc[r][1] = at::vec::fmadd(hk, w1, acc[r][1]);
      acc[r][2] = at::vec::fmadd(hk, w2, acc[r][2]);
      acc[r][3] = at::vec::fmadd(hk, w3, acc[r][3]);
    }
#else
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) {
      const VecF wg = VecF::loadu(wk + g * kV);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) acc[r][g] = at::vec::fmadd(VecF(h[r * ld + k]), wg, acc[r][g]);
    }
#endif
  }
  alignas(64) float pre[MR * 4 * kV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) acc[r][g].store(pre + (r * 4 + g) * kV);
  }
  gate_rows<E>(pre, MR, c, h_next, ld, out, count);
}

template <typename E>
inline void block_rows_any(int m, const float* w, int64_t H, const float* gx, int64_t gx_ld, const float* h,
                           float* c, float* h_next, int64_t ld, E* const* out, int64_t count) {
  switch (m) {
#if defined(CPU_CAPABILITY_AVX512)
    case 6: block_rows<6, E>(w, H, gx, gx_ld, h, c, h_next, ld, out, count); break;
    case 5: block_rows<5, E>(w, H, gx, gx_ld, h, c, h_next, ld, out, count); break;
    case 4: block_rows<4, E>(w, H, gx, gx_ld, h, c, h_next, ld, out, count); break;
#endif
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
    case 3: block_rows<3, E>(w, H, gx, gx_ld, h, c, h_next, ld, out, count); break;
#endif
    case 2: block_rows<2, E>(w, H, gx, gx_ld, h, c, h_next, ld, out, count); break;
    default: block_rows<1, E>(w, H, gx, gx_ld, h, c, h_next, ld, out, count); break;
  }
}

// The final h and c of tile rows [b, e) (tile-relative) go to h_n / c_n.
void retire_rows(const LstmLayerArgs& a, int64_t d, int64_t r0, int64_t b, int64_t e, const float* h,
                 const float* c, int64_t ld) {
  for (int64_t r = b; r < e; ++r) {
    const int64_t offset = d * a.state_dir_stride + a.state_row[r0 + r];
    store_state_any(a.state_type, a.h_n, offset, h + r * ld, a.hidden);
    store_state_any(a.state_type, a.c_n, offset, c + r * ld, a.hidden);
  }
}

template <typename S>
inline void row_to_float(const void* base, int64_t offset, float* dst, int64_t n) {
  const S* src = static_cast<const S*>(base) + offset;
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// dst[0:n] = input element at `offset`, as float.
void input_row(const LstmLayerArgs& a, int64_t offset, float* dst) {
  const int64_t n = a.in_features;
  switch (a.in_type) {
    case kBFloat16: row_to_float<c10::BFloat16>(a.in, offset, dst, n); break;
    case kFloat16: row_to_float<c10::Half>(a.in, offset, dst, n); break;
    default: std::memcpy(dst, static_cast<const float*>(a.in) + offset, n * sizeof(float)); break;
  }
}

// Steps of one chunk, in processing order: time t, active rows m, first gate row `first` in the buffer.
struct ChunkStep {
  int64_t t, m, first;
};

// Direction d, chunk rows [r0, r1): all time steps, a chunk of `chunk` steps at a time.
template <typename E>
void run_task(const LstmLayerArgs& a, int64_t d, int64_t r0, int64_t r1, int64_t chunk) {
  const int64_t H = a.hidden, D = a.directions, T = a.steps, G = 4 * H;
  const int64_t Hp = (H + kV - 1) / kV * kV, nblk = Hp / kV, tile = r1 - r0;
  std::vector<float> state(3 * tile * Hp, 0.f);  // h (double-buffered) and c; rows start at zero
  float* h_cur = state.data();
  float* h_next = h_cur + tile * Hp;
  float* c = h_next + tile * Hp;
  std::unique_ptr<float[]> gx(new float[tile * chunk * G]);
  std::unique_ptr<float[]> x(a.table ? nullptr : new float[tile * chunk * a.in_features]);
  std::vector<ChunkStep> steps(chunk);
  const float* w = a.w_hh + d * nblk * H * 4 * kV;
  E* out_rows[kMaxTileRows];
  int64_t m_prev = 0, s = 0;
  bool finished = false;
  while (!finished) {
    // The chunk's steps (skipping a backward tile's leading steps, stopping a forward tile at its end).
    int64_t n_steps = 0, n_rows = 0;
    for (; s < T && n_steps < chunk; ++s) {
      const int64_t t = d == 0 ? s : T - 1 - s;
      const int64_t m = std::max<int64_t>(0, std::min(a.batch_sizes[t], r1) - r0);
      if (m == 0) {
        if (d == 0) {
          finished = true;
          break;
        }
        continue;
      }
      steps[n_steps++] = {t, m, n_rows};
      n_rows += m;
    }
    if (s >= T) finished = true;
    if (n_steps == 0) break;
    // Gate pre-activations of the chunk: table rows (token input) or gathered inputs times W_ih.
    for (int64_t i = 0; i < n_steps; ++i) {
      const ChunkStep& st = steps[i];
      for (int64_t r = 0; r < st.m; ++r) {
        const int64_t offset = a.in_t[st.t] + a.in_row[r0 + r];
        if (a.table) {
          const int64_t id = static_cast<const int64_t*>(a.in)[offset];
          std::memcpy(gx.get() + (st.first + r) * G, a.table + (id * D + d) * G, G * sizeof(float));
        } else {
          input_row(a, offset, x.get() + (st.first + r) * a.in_features);
        }
      }
    }
    if (!a.table) a.project(d, x.get(), n_rows, gx.get());
    // Recurrence over the chunk.
    for (int64_t i = 0; i < n_steps; ++i) {
      const ChunkStep& st = steps[i];
      const int64_t m = st.m;
      if (m < m_prev) retire_rows(a, d, r0, m, m_prev, h_cur, c, Hp);  // forward: these rows ended
      m_prev = m;
      const float* g = gx.get() + st.first * G;
      E* out = static_cast<E*>(a.out) + a.out_t[st.t] + d * H;
      for (int64_t r = 0; r < m; ++r) out_rows[r] = out + a.out_row[r0 + r];
      for (int64_t nb = 0; nb < nblk; ++nb) {
        const int64_t unit0 = nb * kV, count = std::min(kV, H - unit0);
        for (int64_t rb = 0; rb < m; rb += kRowBlock) {
          const int mr = static_cast<int>(std::min<int64_t>(kRowBlock, m - rb));
          E* block_out[kRowBlock];
          for (int r = 0; r < mr; ++r) block_out[r] = out_rows[rb + r] + unit0;
          block_rows_any<E>(mr, w + nb * H * 4 * kV, H, g + rb * G + unit0 * 4, G, h_cur + rb * Hp,
                            c + rb * Hp + unit0, h_next + rb * Hp + unit0, Hp, block_out, count);
        }
      }
      std::swap(h_cur, h_next);
    }
  }
  retire_rows(a, d, r0, 0, m_prev, h_cur, c, Hp);
  if (a.zero_tail && d == 0) {  // padded positions of the final output, as pad_packed_sequence leaves them
    for (int64_t r = 0; r < tile; ++r) {
      for (int64_t t = a.lengths[r0 + r]; t < T; ++t) {
        std::memset(static_cast<E*>(a.out) + a.out_t[t] + a.out_row[r0 + r], 0, D * H * sizeof(E));
      }
    }
  }
}

// Rows per task: enough tasks for the threads to balance uneven lengths, but at least kMinTileRows rows
// (measured single-threaded, H = 150 / 300, batch 8: tiles of 2-3 rows run 25% slower than tiles of 4,
// tiles of 4-6 and 36-48 rows within 5%).
int64_t choose_tile(int64_t rows, int64_t directions) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t tiles_wanted = std::max<int64_t>(1, (threads * kTasksPerThread + directions - 1) / directions);
  int64_t tile = std::max((rows + tiles_wanted - 1) / tiles_wanted, std::min(rows, kMinTileRows));
  if (tile > kRowBlock) tile = (tile + kRowBlock - 1) / kRowBlock * kRowBlock;  // whole register tiles
  return std::clamp<int64_t>(tile, 1, kMaxTileRows);
}

}  // namespace

void lstm_layer_cpu(const LstmLayerArgs& a) {
  const int64_t rows = a.steps > 0 ? std::min(a.rows, a.batch_sizes[0]) : 0;
  if (rows == 0) return;
  const int64_t tile = a.tile_rows > 0 ? std::min(a.tile_rows, kMaxTileRows) : choose_tile(rows, a.directions);
  const int64_t gate_row_bytes = 4 * a.hidden * static_cast<int64_t>(sizeof(float));
  const int64_t chunk = std::clamp<int64_t>(
      a.chunk_steps > 0 ? a.chunk_steps : kChunkBytes / (tile * gate_row_bytes), 1, std::max<int64_t>(1, a.steps));
  const int64_t n_tiles = (rows + tile - 1) / tile, n_tasks = n_tiles * a.directions;
  // Tasks in order of decreasing work (tile 0 holds the longest rows): a shared counter hands them out,
  // so the threads stay busy with uneven lengths (longest-processing-time-first).
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(n_tasks, std::max(1, at::get_num_threads()));
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t wkr = begin; wkr < end; ++wkr) {
      for (int64_t task = next.fetch_add(1); task < n_tasks; task = next.fetch_add(1)) {
        const int64_t d = task % a.directions, r0 = (task / a.directions) * tile;
        const int64_t r1 = std::min(rows, r0 + tile);
        switch (a.out_type) {
          case kBFloat16: run_task<c10::BFloat16>(a, d, r0, r1, chunk); break;
          case kFloat16: run_task<c10::Half>(a, d, r0, r1, chunk); break;
          default: run_task<float>(a, d, r0, r1, chunk); break;
        }
      }
    }
  });
}

int64_t lstm_block_width() { return kV; }

}  // namespace cpu
}  // namespace mkd_fast
