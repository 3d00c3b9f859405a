// CUDA kernels of the fused knowledge-distillation loss (forward value + hand-derived gradient).
//
// Semantics: csrc/kd_params.h and mkd_fast/reference.py (the test oracle).  This file includes no
// torch/ATen/c10 header so that CI can run `nvcc -c` on it alone; csrc/cuda/README.md has the design.
//
// One launch computes, for every row r of the student logits s[N, C] and the K teachers t[K, N, C]:
//   loss_rows[r] = alpha * CE(s_r, y_r) + (1 - alpha) * soft_scale * soft(s_r, t_r)
//   grad[r, :]   = d loss_rows[r] / d s[r, :]           (when compute_grad)
// Everything is computed in float32 and in log space:
//   log p_s = (s / T - m_s) - log d_s,    m_s = max(s / T),  d_s = sum exp(s / T - m_s)
//   log q_k = (u_k / T - m_k) - log d_k,  u_k = log t_k for probabilities, t_k otherwise
//   log p_t = log q_0 (K == 1)  or  logsumexp_k(log q_k) - log K
// (x / T is computed as x * (1 / T) in float32, as PyTorch's CUDA division by a scalar does.)
// A row is processed in up to three passes over its data:
//   1. statistics: online (max, sum-exp) of the student (at T, and at T = 1 for the hard term when
//      T != 1) and of each teacher, reduced over the row;
//   2. (reverse KL and JSD only) the row sums R = sum p_s (log p_s - log p_t) (JSD: both halves of
//      the loss) that their gradients need;
//   3. loss terms and gradient, re-reading the row (hot in L1/L2) with evict-first loads and
//      streaming gradient stores.
// Paths: C <= kGroupPathMaxC: a group of G (1..32) lanes of one warp per row, shuffle reductions.
//        C >  kGroupPathMaxC: a CTA of 512 threads per row; on sm_90 a row whose bytes exceed
//        kTargetChunkBytes is split over a thread-block cluster of up to 8 CTAs (reductions through
//        distributed shared memory) so that the data a CTA re-reads stays small and hot in L2.
// Per-element exponentials and logarithms use the MUFU approximations (__expf, __logf: relative
// error ~2^-21, results below 2^-126 flushed to 0); the per-row log-sum-exp uses the accurate logf.

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../kd_params.h"
#include "cuda_cluster.cuh"
#include "cuda_device_guard.h"
#include "kd_cuda.h"

namespace {

using mkd_fast::KdParams;
namespace cuda_cluster = mkd_fast::cuda_cluster;

// ------------------------------------------------------------------------------------------------
// Tunables (chosen without a GPU at hand; see README.md).
// ------------------------------------------------------------------------------------------------
constexpr int kCtaThreads = 512;                 // threads of a CTA of the large-C path
constexpr int kGroupThreads = 256;               // threads of a block of the small-C path
constexpr int kMaxSplit = 8;                     // CTAs per row at most (portable cluster size)
constexpr int64_t kGroupPathMaxC = 2048;         // largest C handled by the warp-group path
constexpr int64_t kTargetChunkBytes = 64 * 1024; // bytes (student + teachers) a CTA should own
constexpr int64_t kMinChunkElems = 4096;         // no split below this many classes per CTA
constexpr int64_t kMaxTeachers = 1024;           // keeps the CTA path well within 48 KB of smem
constexpr int64_t kMaxClasses = (int64_t(1) << 31) - 1024;  // in-row indices are int
constexpr int64_t kGroupSmemBudget = 32 * 1024;  // shared memory of a small-C block (row stats)
#ifndef KD_MAX_GRID_ROWS  // overridable to exercise the grid-stride loops in tests
#define KD_MAX_GRID_ROWS (int64_t(1) << 24)
#endif
constexpr int64_t kMaxGridRows = KD_MAX_GRID_ROWS;  // rows (clusters) in a grid; grid-stride beyond
constexpr int kScaleThreads = 256;

// Kernel-side view of one call (derived on the host from KdParams); lives in the constant bank.
struct DevParams {
  const void* student;
  const void* teacher;
  const int64_t* labels;
  const bool* mask;
  const float* row_weight;  // optional [n_rows]: loss and gradient of row r times loss_scale * row_weight[r]
  float* loss;
  void* grad;  // nullptr when !compute_grad
  int64_t n_rows;
  int64_t s_stride, t_stride, t_kstride, g_stride;
  int64_t ignore_index;
  int C, K;
  int chunk;      // CTA path: classes owned by one CTA of a row (multiple of 8); C when unsplit
  int n_split;    // CTAs per row (cluster size) of the CTA path
  int group_log2; // log2(G) of the warp-group path
  int div;
  float invT;     // 1 / T in float32
  float loss_scale;
  float alpha;
  float beta, omb;  // JSD beta and 1 - beta
  float soft_mul;   // (1 - alpha) * soft_scale
  float gcoef;      // (1 - alpha) * soft_scale / T
  float gcoef_jsd;  // gcoef * (1 - beta)
  float mse_gcoef;  // (1 - alpha) * 2 / C
  float invC;       // 1 / C   (MSE mean over classes)
  float invK;       // 1 / K   (MSE mean over teachers)
  float logK;       // log K   (probability averaging of the ensemble)
  bool probs;       // teacher values are probabilities
  bool is_kl;       // KL (else soft CE) in the KL/CE mode
  bool hard;        // alpha > 0 && labels
  bool soft;        // alpha < 1
  bool stats;       // soft && divergence != MSE: student/teacher log-softmax statistics needed
  bool hard_own;    // hard term needs its own T = 1 statistics
  bool same_t;      // stats && T == 1: softmax(s) of the hard term equals p_s
  bool compute_grad;
};

enum LoadPolicy : int { kKeep = 0, kLast = 1, kPlain = 2 };
enum StorePolicy : int { kStream = 0, kStorePlain = 1 };

template <int N>
struct IntC {
  static constexpr int value = N;
};

// ------------------------------------------------------------------------------------------------
// Shared memory: all of it dynamic (one extern array), carved by the kernels.
// ------------------------------------------------------------------------------------------------
#if !defined(KD_HOST_EMULATION)
__device__ __forceinline__ float* dyn_smem() {
  extern __shared__ float4 kd_dyn_smem_f4[];
  return reinterpret_cast<float*>(kd_dyn_smem_f4);
}
#endif

// ------------------------------------------------------------------------------------------------
// Loads / stores of W consecutive elements as one access of W * sizeof(T) bytes (16, 8, 4 or 2).
// ------------------------------------------------------------------------------------------------
template <int P>
__device__ __forceinline__ uint4 ld_b16(const void* p) {
  if constexpr (P == kKeep) return __ldg(static_cast<const uint4*>(p));
  else if constexpr (P == kLast) return __ldcs(static_cast<const uint4*>(p));
  else return *static_cast<const uint4*>(p);
}
template <int P>
__device__ __forceinline__ uint2 ld_b8(const void* p) {
  if constexpr (P == kKeep) return __ldg(static_cast<const uint2*>(p));
  else if constexpr (P == kLast) return __ldcs(static_cast<const uint2*>(p));
  else return *static_cast<const uint2*>(p);
}
template <int P>
__device__ __forceinline__ unsigned int ld_b4(const void* p) {
  if constexpr (P == kKeep) return __ldg(static_cast<const unsigned int*>(p));
  else if constexpr (P == kLast) return __ldcs(static_cast<const unsigned int*>(p));
  else return *static_cast<const unsigned int*>(p);
}
template <int P>
__device__ __forceinline__ unsigned short ld_b2(const void* p) {
  if constexpr (P == kKeep) return __ldg(static_cast<const unsigned short*>(p));
  else if constexpr (P == kLast) return __ldcs(static_cast<const unsigned short*>(p));
  else return *static_cast<const unsigned short*>(p);
}
template <int P>
__device__ __forceinline__ void st_b16(void* p, uint4 v) {
  if constexpr (P == kStream) __stcs(static_cast<uint4*>(p), v);
  else *static_cast<uint4*>(p) = v;
}
template <int P>
__device__ __forceinline__ void st_b8(void* p, uint2 v) {
  if constexpr (P == kStream) __stcs(static_cast<uint2*>(p), v);
  else *static_cast<uint2*>(p) = v;
}
template <int P>
__device__ __forceinline__ void st_b4(void* p, unsigned int v) {
  if constexpr (P == kStream) __stcs(static_cast<unsigned int*>(p), v);
  else *static_cast<unsigned int*>(p) = v;
}
template <int P>
__device__ __forceinline__ void st_b2(void* p, unsigned short v) {
  if constexpr (P == kStream) __stcs(static_cast<unsigned short*>(p), v);
  else *static_cast<unsigned short*>(p) = v;
}

// 16-bit element <-> float (bits in the low 16 bits of an unsigned int).
template <typename T>
__device__ __forceinline__ float h16_to_f(unsigned int bits);
template <>
__device__ __forceinline__ float h16_to_f<__nv_bfloat16>(unsigned int bits) {
  return __uint_as_float(bits << 16);
}
template <>
__device__ __forceinline__ float h16_to_f<__half>(unsigned int bits) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
}
template <typename T>
__device__ __forceinline__ unsigned int f_to_h16(float x);
template <>
__device__ __forceinline__ unsigned int f_to_h16<__nv_bfloat16>(float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}
template <>
__device__ __forceinline__ unsigned int f_to_h16<__half>(float x) {
  return __half_as_ushort(__float2half_rn(x));
}

template <typename T>
__device__ __forceinline__ void unpack_word(unsigned int w, float* x) {
  x[0] = h16_to_f<T>(w & 0xffffu);
  x[1] = h16_to_f<T>(w >> 16);
}
template <typename T>
__device__ __forceinline__ unsigned int pack_word(const float* x) {
  return f_to_h16<T>(x[0]) | (f_to_h16<T>(x[1]) << 16);
}

// x[0..W) = float(ptr[0..W)); ptr must be aligned to W * sizeof(T) bytes.
template <typename T, int W, int P>
__device__ __forceinline__ void load_f(const T* ptr, float* x) {
  if constexpr (sizeof(T) == 4) {
    static_assert(W == 4 || W == 2 || W == 1, "float vector width");
    if constexpr (W == 4) {
      const uint4 v = ld_b16<P>(ptr);
      x[0] = __uint_as_float(v.x); x[1] = __uint_as_float(v.y);
      x[2] = __uint_as_float(v.z); x[3] = __uint_as_float(v.w);
    } else if constexpr (W == 2) {
      const uint2 v = ld_b8<P>(ptr);
      x[0] = __uint_as_float(v.x); x[1] = __uint_as_float(v.y);
    } else {
      x[0] = __uint_as_float(ld_b4<P>(ptr));
    }
  } else {
    static_assert(sizeof(T) == 2, "16-bit element");
    static_assert(W == 8 || W == 4 || W == 2 || W == 1, "16-bit vector width");
    if constexpr (W == 8) {
      const uint4 v = ld_b16<P>(ptr);
      unpack_word<T>(v.x, x); unpack_word<T>(v.y, x + 2);
      unpack_word<T>(v.z, x + 4); unpack_word<T>(v.w, x + 6);
    } else if constexpr (W == 4) {
      const uint2 v = ld_b8<P>(ptr);
      unpack_word<T>(v.x, x); unpack_word<T>(v.y, x + 2);
    } else if constexpr (W == 2) {
      unpack_word<T>(ld_b4<P>(ptr), x);
    } else {
      x[0] = h16_to_f<T>(ld_b2<P>(ptr));
    }
  }
}

// ptr[0..W) = T(x[0..W)) (round to nearest even); ptr aligned to W * sizeof(T) bytes.
template <typename T, int W, int P>
__device__ __forceinline__ void store_f(T* ptr, const float* x) {
  if constexpr (sizeof(T) == 4) {
    if constexpr (W == 4) {
      st_b16<P>(ptr, make_uint4(__float_as_uint(x[0]), __float_as_uint(x[1]), __float_as_uint(x[2]),
                                __float_as_uint(x[3])));
    } else if constexpr (W == 2) {
      st_b8<P>(ptr, make_uint2(__float_as_uint(x[0]), __float_as_uint(x[1])));
    } else {
      st_b4<P>(ptr, __float_as_uint(x[0]));
    }
  } else {
    if constexpr (W == 8) {
      st_b16<P>(ptr, make_uint4(pack_word<T>(x), pack_word<T>(x + 2), pack_word<T>(x + 4),
                                pack_word<T>(x + 6)));
    } else if constexpr (W == 4) {
      st_b8<P>(ptr, make_uint2(pack_word<T>(x), pack_word<T>(x + 2)));
    } else if constexpr (W == 2) {
      st_b4<P>(ptr, pack_word<T>(x));
    } else {
      st_b2<P>(ptr, static_cast<unsigned short>(f_to_h16<T>(x[0])));
    }
  }
}

// W consecutive elements kept packed in 32-bit words (fewer live registers than W floats).
template <typename T, int W>
struct Pack {
  static constexpr int kBytes = W * static_cast<int>(sizeof(T));
  static constexpr int kWords = kBytes >= 4 ? kBytes / 4 : 1;
  unsigned int w[kWords];
};

template <typename T, int W, int P>
__device__ __forceinline__ Pack<T, W> load_pack(const T* ptr) {
  Pack<T, W> pk;
  constexpr int B = Pack<T, W>::kBytes;
  static_assert(B == 16 || B == 8 || B == 4 || B == 2, "access width");
  if constexpr (B == 16) {
    const uint4 v = ld_b16<P>(ptr);
    pk.w[0] = v.x; pk.w[1] = v.y; pk.w[2] = v.z; pk.w[3] = v.w;
  } else if constexpr (B == 8) {
    const uint2 v = ld_b8<P>(ptr);
    pk.w[0] = v.x; pk.w[1] = v.y;
  } else if constexpr (B == 4) {
    pk.w[0] = ld_b4<P>(ptr);
  } else {
    pk.w[0] = ld_b2<P>(ptr);
  }
  return pk;
}

template <typename T, int W, int P>
__device__ __forceinline__ void store_pack(T* ptr, const Pack<T, W>& pk) {
  constexpr int B = Pack<T, W>::kBytes;
  if constexpr (B == 16) {
    st_b16<P>(ptr, make_uint4(pk.w[0], pk.w[1], pk.w[2], pk.w[3]));
  } else if constexpr (B == 8) {
    st_b8<P>(ptr, make_uint2(pk.w[0], pk.w[1]));
  } else if constexpr (B == 4) {
    st_b4<P>(ptr, pk.w[0]);
  } else {
    st_b2<P>(ptr, static_cast<unsigned short>(pk.w[0]));
  }
}

// Element j (a compile-time constant after unrolling) as float.
template <typename T, int W>
__device__ __forceinline__ float pack_get(const Pack<T, W>& pk, int j) {
  if constexpr (sizeof(T) == 4) {
    return __uint_as_float(pk.w[j]);
  } else {
    const unsigned int w = pk.w[j >> 1];
    return h16_to_f<T>((j & 1) ? (w >> 16) : (w & 0xffffu));
  }
}

// Sets element j; for 16-bit types the even element of a word must be set before the odd one.
template <typename T, int W>
__device__ __forceinline__ void pack_set(Pack<T, W>& pk, int j, float x) {
  if constexpr (sizeof(T) == 4) {
    pk.w[j] = __float_as_uint(x);
  } else {
    const unsigned int b = f_to_h16<T>(x);
    if (j & 1) pk.w[j >> 1] |= b << 16;
    else pk.w[j >> 1] = b;
  }
}

// Calls f(IntC<V>, c) for the aligned vectors c = c0 + i * V inside [c0, c1), then f(IntC<1>, c) for
// the scalar tail; thread `tid` of `nt` takes every nt-th item.  c0 must be a multiple of V.
// Column indices inside a row are int (the launcher checks C < 2^31 - 64); row offsets are int64.
template <int V, class F>
__device__ __forceinline__ void for_range(int c0, int c1, int tid, int nt, F&& f) {
  const int nvec = (c1 - c0) / V;
#pragma unroll 1
  for (int i = tid; i < nvec; i += nt) f(IntC<V>{}, c0 + i * V);
  if constexpr (V > 1) {
#pragma unroll 1
    for (int c = c0 + nvec * V + tid; c < c1; c += nt) f(IntC<1>{}, c);
  }
}

// ------------------------------------------------------------------------------------------------
// Online log-sum-exp pieces.  (m, d) stands for sum exp(x) = d * exp(m); the empty set is (-inf, 0).
// ------------------------------------------------------------------------------------------------
__device__ __forceinline__ void md_combine(float& m, float& d, float m2, float d2) {
  const float mn = fmaxf(m, m2);
  if (mn == -INFINITY) {  // both empty (exp(-inf - -inf) would be NaN)
    d = d + d2;
    m = mn;
    return;
  }
  // Symmetric in its two operands (a + b == b + a), which the butterfly reductions rely on.
  d = d * expf(m - mn) + d2 * expf(m2 - mn);
  m = mn;
}

template <int N>
__device__ __forceinline__ void md_update(float& m, float& d, const float (&x)[N]) {
  float vm = x[0];
#pragma unroll
  for (int j = 1; j < N; ++j) vm = fmaxf(vm, x[j]);
  const float mn = fmaxf(m, vm);
  if (mn == -INFINITY) return;  // every value so far is -inf: nothing to add
  float acc = d * __expf(m - mn);  // m == -inf: d == 0 and exp(-inf) == 0
#pragma unroll
  for (int j = 0; j < N; ++j) acc += __expf(x[j] - mn);
  m = mn;
  d = acc;
}

// One step of an online logsumexp over the teachers with a single exp: sum = ss * exp(mm).
__device__ __forceinline__ void lse_step(float& mm, float& ss, float a) {
  const bool gt = a > mm;
  float e = __expf(-fabsf(a - mm));
  if (a == -INFINITY) e = 0.f;  // also covers mm == a == -inf (NaN otherwise)
  ss = gt ? fmaf(ss, e, 1.f) : ss + e;
  mm = gt ? a : mm;
}

__device__ __forceinline__ void red_md(float& m, float& d, unsigned mask, int width) {
  for (int o = width >> 1; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(mask, m, o);
    const float d2 = __shfl_xor_sync(mask, d, o);
    md_combine(m, d, m2, d2);
  }
}

__device__ __forceinline__ float red_sum(float a, unsigned mask, int width) {
  for (int o = width >> 1; o > 0; o >>= 1) a += __shfl_xor_sync(mask, a, o);
  return a;
}

// ------------------------------------------------------------------------------------------------
// Reducers: how the participants of one row (a lane group, or a CTA / cluster of CTAs) combine.
// Per-row statistics live in `lse` as (max, log sum-exp) pairs: item 0 = student at T, item 1 =
// student at T = 1 (hard term), item 2 + k = teacher k at T.
// ------------------------------------------------------------------------------------------------
struct GroupReducer {
  float* lse;     // [2 + K][2], private to the group
  unsigned mask;  // lanes of the group
  int width;      // G
  bool leader;    // lane 0 of the group

  // The previous row's readers of `lse` are done before the leader rewrites it.
  __device__ __forceinline__ void begin_row() { __syncwarp(mask); }
  __device__ __forceinline__ void push_md(int item, float m, float d) {
    red_md(m, d, mask, width);
    if (leader) {
      lse[2 * item] = m;
      lse[2 * item + 1] = logf(d);
    }
  }
  __device__ __forceinline__ void finish_md(int) { __syncwarp(mask); }
  __device__ __forceinline__ void sum2_all(float& a, float& b, int) {
    a = red_sum(a, mask, width);
    b = red_sum(b, mask, width);
  }
  // Returns true on the one participant that holds the total in `a`.
  __device__ __forceinline__ bool sum_root(float& a, int) {
    a = red_sum(a, mask, width);
    return leader;
  }
};

// A CTA (n_split == 1) or a cluster of n_split CTAs.  Shared-memory slots that peers read through
// DSMEM are double-buffered by the row parity, which flips after every row that went through the
// reductions, so that a slot is rewritten only after one more cluster barrier passed by all.
// Only a few ints live in registers; addresses are recomputed from the dynamic shared-memory base.
// Layout (floats): scratch [2][32][2] | sums [2][2] | lsum [2] | res [2] | lse [n_items][2] |
//                  stats [2][n_items][2]
struct CtaReducer {
  int n_items;  // 2 + K
  int rank;     // rank in the cluster (0 when n_split == 1)
  int state;    // bit 0: row parity, bit 1: scratch buffer
  float* lse;   // dyn_smem() + kLse

  static constexpr int kScratch = 0, kSums = 128, kLsum = 132, kRes = 134, kLse = 136;

  __device__ __forceinline__ int par() const { return state & 1; }
  __device__ __forceinline__ float* scratch() const { return dyn_smem() + kScratch + (state & 2) * 32; }
  __device__ __forceinline__ float* stats() const { return dyn_smem() + kLse + 2 * n_items; }

  __device__ __forceinline__ void begin_row() {}

  // Block reduction of (m, d); warp 0 ends with the CTA value.  One __syncthreads; the scratch
  // buffer alternates so that the next reduction cannot overwrite what warp 0 still reads.
  __device__ __forceinline__ void block_md(float& m, float& d) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    red_md(m, d, 0xffffffffu, 32);
    float* sc = scratch();
    if (lane == 0) {
      sc[2 * warp] = m;
      sc[2 * warp + 1] = d;
    }
    __syncthreads();
    if (warp == 0) {
      m = lane < nwarps ? sc[2 * lane] : -INFINITY;
      d = lane < nwarps ? sc[2 * lane + 1] : 0.f;
      red_md(m, d, 0xffffffffu, 32);
    }
    state ^= 2;
  }
  // Block reduction of two sums; warp 0 ends with the CTA values.  One __syncthreads.
  __device__ __forceinline__ void block_sum2(float& a, float& b) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    a = red_sum(a, 0xffffffffu, 32);
    b = red_sum(b, 0xffffffffu, 32);
    float* sc = scratch();
    if (lane == 0) {
      sc[2 * warp] = a;
      sc[2 * warp + 1] = b;
    }
    __syncthreads();
    if (warp == 0) {
      a = red_sum(lane < nwarps ? sc[2 * lane] : 0.f, 0xffffffffu, 32);
      b = red_sum(lane < nwarps ? sc[2 * lane + 1] : 0.f, 0xffffffffu, 32);
    }
    state ^= 2;
  }

  __device__ __forceinline__ void push_md(int item, float m, float d) {
    block_md(m, d);
    if (threadIdx.x == 0) {
      float* st = stats() + (par() * n_items + item) * 2;
      st[0] = m;
      st[1] = d;
    }
  }
  __device__ __forceinline__ void finish_md(int n_split) {
    if (n_split == 1) {
      __syncthreads();
      for (int i = threadIdx.x; i < n_items; i += blockDim.x) {
        const float* st = stats() + (par() * n_items + i) * 2;
        lse[2 * i] = st[0];
        lse[2 * i + 1] = logf(st[1]);
      }
    } else {
      cuda_cluster::sync();
      for (int i = threadIdx.x; i < n_items; i += blockDim.x) {
        float m = -INFINITY, d = 0.f;
        for (int r = 0; r < n_split; ++r) {  // same order in every CTA: identical results
          const float* st = cuda_cluster::peer(stats(), r) + (par() * n_items + i) * 2;
          md_combine(m, d, st[0], st[1]);
        }
        lse[2 * i] = m;
        lse[2 * i + 1] = logf(d);
      }
    }
    __syncthreads();
  }
  __device__ __forceinline__ void sum2_all(float& a, float& b, int n_split) {
    block_sum2(a, b);
    float* sums = dyn_smem() + kSums + 2 * par();
    if (threadIdx.x == 0) {
      sums[0] = a;
      sums[1] = b;
    }
    if (n_split == 1) {
      __syncthreads();
      a = sums[0];
      b = sums[1];
    } else {
      float* res = dyn_smem() + kRes;
      cuda_cluster::sync();
      if (threadIdx.x == 0) {
        float ta = 0.f, tb = 0.f;
        for (int r = 0; r < n_split; ++r) {  // rank order: identical in every CTA
          const float* sr = cuda_cluster::peer(sums, r);
          ta += sr[0];
          tb += sr[1];
        }
        res[0] = ta;
        res[1] = tb;
      }
      __syncthreads();
      a = res[0];
      b = res[1];
    }
  }
  // Returns true on the one thread (rank 0, thread 0) that holds the row total in `a`.
  __device__ __forceinline__ bool sum_root(float& a, int n_split) {
    float b = 0.f;
    block_sum2(a, b);
    if (n_split == 1) return threadIdx.x == 0;
    float* lsum = dyn_smem() + kLsum + par();
    if (threadIdx.x == 0) *lsum = a;
    cuda_cluster::sync();
    if (rank == 0 && threadIdx.x == 0) {
      float t = 0.f;
      for (int r = 0; r < n_split; ++r) t += *cuda_cluster::peer(lsum, r);
      a = t;
      return true;
    }
    return false;
  }
  __device__ __forceinline__ void row_done() { state ^= 1; }
};

// ------------------------------------------------------------------------------------------------
// Per-element pieces.
// ------------------------------------------------------------------------------------------------
template <int N>
__device__ __forceinline__ void stats_update(float (&x)[N], float invT, bool log_in, bool want_t,
                                             bool want_1, float& m, float& d, float& m1, float& d1) {
  if (log_in) {
#pragma unroll
    for (int j = 0; j < N; ++j) x[j] = __logf(x[j]);
  }
  if (want_1) md_update<N>(m1, d1, x);
  if (want_t) {
#pragma unroll
    for (int j = 0; j < N; ++j) x[j] *= invT;
    md_update<N>(m, d, x);
  }
}

// Online (max, sum-exp) over [c0, c1) of one row: of x / T (want_t) and of x (want_1), where x is
// the stored value, or its log when log_in.  Two vectors per thread and step: more loads in flight.
template <typename T, int V>
__device__ __forceinline__ void stats_pass(const T* row, int c0, int c1, int tid, int nt, float invT,
                                           bool log_in, bool want_t, bool want_1, float& m, float& d,
                                           float& m1, float& d1) {
  const int nvec = (c1 - c0) / V;
  const T* base = row + c0;
  const float pad = log_in ? 0.f : -INFINITY;  // contributes nothing (log 0 = -inf)
#pragma unroll 1
  for (int i = tid; i < nvec; i += 2 * nt) {
    float x[2 * V];
    load_f<T, V, kKeep>(base + int64_t(i) * V, x);
    if (i + nt < nvec) {
      load_f<T, V, kKeep>(base + int64_t(i + nt) * V, x + V);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) x[V + j] = pad;
    }
    stats_update<2 * V>(x, invT, log_in, want_t, want_1, m, d, m1, d1);
  }
  if constexpr (V > 1) {
#pragma unroll 1
    for (int c = c0 + nvec * V + tid; c < c1; c += nt) {
      float x[1];
      load_f<T, 1, kKeep>(row + c, x);
      stats_update<1>(x, invT, log_in, want_t, want_1, m, d, m1, d1);
    }
  }
}

// log p_t of W consecutive classes at t (teacher 0 of the row, column already added).
template <typename TT, int W, int P>
__device__ __forceinline__ void teacher_logp(const DevParams& p, const TT* t, const float* lse_t,
                                             float (&lpt)[W]) {
  if (p.K == 1) {
    const Pack<TT, W> u = load_pack<TT, W, P>(t);
    const float mk = lse_t[0], lk = lse_t[1];
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const float uj = pack_get<TT, W>(u, j);
      const float v = p.probs ? __logf(uj) : uj;
      lpt[j] = (v * p.invT - mk) - lk;
    }
  } else {
    float mm[W], ss[W];
#pragma unroll
    for (int j = 0; j < W; ++j) {
      mm[j] = -INFINITY;
      ss[j] = 0.f;
    }
#pragma unroll 1
    for (int k = 0; k < p.K; ++k) {
      const Pack<TT, W> u = load_pack<TT, W, P>(t + k * p.t_kstride);
      const float mk = lse_t[2 * k], lk = lse_t[2 * k + 1];
#pragma unroll
      for (int j = 0; j < W; ++j) {
        const float uj = pack_get<TT, W>(u, j);
        const float v = p.probs ? __logf(uj) : uj;
        lse_step(mm[j], ss[j], (v * p.invT - mk) - lk);
      }
    }
#pragma unroll
    for (int j = 0; j < W; ++j) lpt[j] = (mm[j] + __logf(ss[j])) - p.logK;
  }
}

// MSE target: mean over the teachers of the raw stored values (as reference.py: teacher.mean(0)).
template <typename TT, int W, int P>
__device__ __forceinline__ void teacher_mean(const DevParams& p, const TT* t, float (&tg)[W]) {
  load_f<TT, W, P>(t, tg);
#pragma unroll 1
  for (int k = 1; k < p.K; ++k) {
    float u[W];
    load_f<TT, W, P>(t + k * p.t_kstride, u);
#pragma unroll
    for (int j = 0; j < W; ++j) tg[j] += u[j];
  }
#pragma unroll
  for (int j = 0; j < W; ++j) tg[j] *= p.invK;
}

template <typename TS, typename TT>
struct RowCtx {
  const TS* s;         // student row
  const TT* t;         // teacher 0 row
  TS* g;               // gradient row, nullptr when !compute_grad
  const float* lse_t;  // teachers: [K][2] (max, log sum-exp)
  int y;               // label when p.hard (then in [0, C)), else -1
  float w;             // row weight: loss_scale * row_weight[row]
  float ms, ls;        // student at T: max and log sum-exp
  float m1, l1;        // student at T = 1
  float R;             // reverse KL: R; JSD: S
};

enum PassMode : int {
  kP2RKL = 0,   // sum p_s (log p_s - log p_t)
  kP2JSD = 1,   // sum_{p_t>0} p_t (log p_t - log M), sum_{p_s>0} p_s (log p_s - log M)
  kP3KLCE = 2,  // KL / soft CE loss terms + gradient
  kP3RKL = 3,   // reverse-KL gradient
  kP3JSD = 4,   // JSD gradient
  kP3MSE = 5,   // MSE loss terms + gradient
  kP3Hard = 6,  // hard term only (alpha == 1): gradient
};

template <int MODE, typename TS, typename TT, int V>
__device__ __forceinline__ void elem_pass(const DevParams& p, const RowCtx<TS, TT>& r, int c0, int c1,
                                          int tid, int nt, float& acc_a, float& acc_b) {
  constexpr bool kP3 = MODE >= kP3KLCE;
  constexpr int kPol = kP3 ? kLast : kKeep;  // the last pass reads every byte for the last time
  constexpr bool kLogits = MODE != kP3MSE && MODE != kP3Hard;
  for_range<V>(c0, c1, tid, nt, [&](auto wt, int c) {
    constexpr int W = decltype(wt)::value;
    const Pack<TS, W> xs = load_pack<TS, W, kPol>(r.s + c);
    [[maybe_unused]] float aux[W];  // log p_t (logit modes) or the MSE target
    if constexpr (kLogits) {
      teacher_logp<TT, W, kPol>(p, r.t + c, r.lse_t, aux);
    } else if constexpr (MODE == kP3MSE) {
      teacher_mean<TT, W, kPol>(p, r.t + c, aux);
    }
    [[maybe_unused]] Pack<TS, W> gs;
    [[maybe_unused]] const int jy = r.y - c;  // position of the label in this vector (if inside)
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const float x = pack_get<TS, W>(xs, j);
      [[maybe_unused]] float g = 0.f;
      [[maybe_unused]] float ps = 0.f;
      if constexpr (kLogits) {
        const float lpt = aux[j];
        const float lps = (x * p.invT - r.ms) - r.ls;
        ps = __expf(lps);
        if constexpr (MODE == kP3KLCE) {
          const float pt = __expf(lpt);
          const float tl = p.is_kl ? lpt : 0.f;
          acc_a += pt != 0.f ? pt * (tl - lps) : 0.f;
          g = p.gcoef * (ps - pt);
        } else if constexpr (MODE == kP2RKL) {
          acc_a += ps != 0.f ? ps * (lps - lpt) : 0.f;
        } else if constexpr (MODE == kP3RKL) {
          g = ps != 0.f ? p.gcoef * ps * ((lps - lpt) - r.R) : 0.f;
        } else {  // JSD
          const float pt = __expf(lpt);
          const float mix = p.beta * pt + p.omb * ps;
          const float lm = mix != mix ? mix : __logf(fmaxf(mix, FLT_MIN));  // reference: log(mix.clamp_min(tiny)); NaN kept
          if constexpr (MODE == kP2JSD) {
            acc_a += pt != 0.f ? pt * (lpt - lm) : 0.f;
            acc_b += ps != 0.f ? ps * (lps - lm) : 0.f;
          } else {
            g = ps != 0.f ? p.gcoef_jsd * ps * ((lps - lm) - r.R) : 0.f;
          }
        }
      } else if constexpr (MODE == kP3MSE) {
        const bool ok = aux[j] != -INFINITY;  // -inf marks a padded class: skipped (NaN propagates)
        const float dlt = x - (ok ? aux[j] : 0.f);
        acc_a += ok ? dlt * dlt : 0.f;
        g = ok ? p.mse_gcoef * dlt : 0.f;
      }
      if constexpr (kP3) {
        if (p.hard) {
          float p1;
          if constexpr (kLogits) {
            p1 = p.same_t ? ps : __expf((x - r.m1) - r.l1);
          } else {
            p1 = __expf((x - r.m1) - r.l1);
          }
          g += p.alpha * (p1 - (j == jy ? 1.f : 0.f));
        }
        pack_set<TS, W>(gs, j, g * r.w);
      }
    }
    if constexpr (kP3) {
      if (r.g != nullptr) store_pack<TS, W, kStream>(r.g + c, gs);
    }
  });
}

template <typename TS, int V>
__device__ __forceinline__ void fill_range(TS* g, int c0, int c1, int tid, int nt, float v) {
  for_range<V>(c0, c1, tid, nt, [&](auto wt, int c) {
    constexpr int W = decltype(wt)::value;
    float x[W];
#pragma unroll
    for (int j = 0; j < W; ++j) x[j] = v;
    store_f<TS, W, kStream>(g + c, x);
  });
}

// ------------------------------------------------------------------------------------------------
// One row: [c0, c1) is the part of the row these participants own (the whole row unless split over
// a cluster); `root` is the one thread that writes loss_rows[row] on the early-exit paths.
// All participants of a row take the same branches (everything they branch on is per row).
// Returns whether the row went through the reducer (so that the CTA reducer flips its parity).
// ------------------------------------------------------------------------------------------------
template <typename TS, typename TT, int V, class Red>
__device__ __forceinline__ bool process_row(const DevParams& p, int64_t row, int c0, int c1, int tid,
                                            int nt, Red& red, bool root) {
  RowCtx<TS, TT> r;
  r.s = static_cast<const TS*>(p.student) + row * p.s_stride;
  r.t = static_cast<const TT*>(p.teacher) + row * p.t_stride;
  r.g = p.compute_grad ? static_cast<TS*>(p.grad) + row * p.g_stride : nullptr;

  bool active = (p.mask == nullptr) || p.mask[row];
  int64_t label = -1;
  if (p.labels != nullptr) {
    label = p.labels[row];
    active = active && (label != p.ignore_index);
  }
  r.w = p.row_weight != nullptr ? p.loss_scale * p.row_weight[row] : p.loss_scale;
  // Inactive row, zero weight (as the CPU kernel: nothing the row holds may leak through 0 * NaN), or
  // alpha == 1 without labels: loss 0 and gradient 0.
  if (!active || r.w == 0.f || (!p.hard && !p.soft)) {
    if (root) p.loss[row] = 0.f;
    if (r.g != nullptr) fill_range<TS, V>(r.g, c0, c1, tid, nt, 0.f);
    return false;
  }
  if (p.hard && (label < 0 || label >= p.C)) {  // label out of range: NaN, never read out of bounds
    if (root) p.loss[row] = NAN;
    if (r.g != nullptr) fill_range<TS, V>(r.g, c0, c1, tid, nt, NAN);
    return false;
  }
  r.y = p.hard ? static_cast<int>(label) : -1;
  red.begin_row();

  // Pass 1: statistics.
  if (p.stats || p.hard_own) {
    float m = -INFINITY, d = 0.f, m1 = -INFINITY, d1 = 0.f;
    stats_pass<TS, V>(r.s, c0, c1, tid, nt, p.invT, false, p.stats, p.hard_own, m, d, m1, d1);
    if (p.stats) red.push_md(0, m, d);
    if (p.hard_own) red.push_md(1, m1, d1);
    if (p.stats) {
#pragma unroll 1
      for (int k = 0; k < p.K; ++k) {
        float mk = -INFINITY, dk = 0.f, unused_m = -INFINITY, unused_d = 0.f;
        stats_pass<TT, V>(r.t + k * p.t_kstride, c0, c1, tid, nt, p.invT, p.probs, true, false, mk,
                          dk, unused_m, unused_d);
        red.push_md(2 + k, mk, dk);
      }
    }
    red.finish_md(p.n_split);
  }
  // (Items that were not computed hold stale values; they are not used.)
  r.ms = red.lse[0];
  r.ls = red.lse[1];
  r.m1 = p.hard_own ? red.lse[2] : r.ms;
  r.l1 = p.hard_own ? red.lse[3] : r.ls;
  r.lse_t = red.lse + 4;
  r.R = 0.f;

  // Pass 2: the row sums that the reverse-KL / JSD gradients need (they are also the loss).
  float A = 0.f, B = 0.f;
  if (p.soft && p.div == mkd_fast::kReverseKL) {
    elem_pass<kP2RKL, TS, TT, V>(p, r, c0, c1, tid, nt, A, B);
    red.sum2_all(A, B, p.n_split);
    r.R = A;
  } else if (p.soft && p.div == mkd_fast::kJSD) {
    elem_pass<kP2JSD, TS, TT, V>(p, r, c0, c1, tid, nt, A, B);
    red.sum2_all(A, B, p.n_split);
    r.R = B;
  }

  // Pass 3: loss terms (KL, CE, MSE) and gradient.
  float acc = 0.f, unused = 0.f;
  if (p.soft) {
    switch (p.div) {
      case mkd_fast::kKL:
      case mkd_fast::kSoftCE:
        elem_pass<kP3KLCE, TS, TT, V>(p, r, c0, c1, tid, nt, acc, unused);
        break;
      case mkd_fast::kReverseKL:
        if (r.g != nullptr) elem_pass<kP3RKL, TS, TT, V>(p, r, c0, c1, tid, nt, acc, unused);
        break;
      case mkd_fast::kJSD:
        if (r.g != nullptr) elem_pass<kP3JSD, TS, TT, V>(p, r, c0, c1, tid, nt, acc, unused);
        break;
      default:  // kMSE
        elem_pass<kP3MSE, TS, TT, V>(p, r, c0, c1, tid, nt, acc, unused);
        break;
    }
  } else if (r.g != nullptr) {
    elem_pass<kP3Hard, TS, TT, V>(p, r, c0, c1, tid, nt, acc, unused);
  }

  if (red.sum_root(acc, p.n_split)) {
    float loss = 0.f;
    if (p.hard) {
      float sy;
      load_f<TS, 1, kKeep>(r.s + r.y, &sy);
      loss = p.alpha * ((r.m1 - sy) + r.l1);  // logsumexp(s) - s[y]
    }
    if (p.soft) {
      float soft;
      switch (p.div) {
        case mkd_fast::kReverseKL: soft = A; break;
        case mkd_fast::kJSD: soft = p.beta * A + p.omb * B; break;
        case mkd_fast::kMSE: soft = acc * p.invC; break;
        default: soft = acc; break;
      }
      loss = loss + p.soft_mul * soft;
    }
    p.loss[row] = loss * r.w;
  }
  return true;
}

// ------------------------------------------------------------------------------------------------
// Kernels.
// ------------------------------------------------------------------------------------------------

// Large C: one CTA per row, or a cluster of n_split CTAs per row (CTA `rank` owns the classes
// [rank * chunk, (rank + 1) * chunk)).  Grid: n_split * (rows in flight); grid-stride over rows.
template <typename TS, typename TT, int V>
__global__ void __launch_bounds__(kCtaThreads, 2) kd_rows_cta_kernel(const DevParams p) {
  CtaReducer red;
  red.n_items = 2 + p.K;
  red.rank = p.n_split > 1 ? cuda_cluster::rank() : 0;
  red.state = 0;
  red.lse = dyn_smem() + CtaReducer::kLse;

  const int64_t c0l = int64_t(p.chunk) * red.rank;
  const int c0 = c0l < p.C ? static_cast<int>(c0l) : p.C;
  const int c1 = int64_t(c0) + p.chunk < p.C ? c0 + p.chunk : p.C;
  for (int64_t row = blockIdx.x / p.n_split; row < p.n_rows; row += gridDim.x / p.n_split) {
    if (process_row<TS, TT, V>(p, row, c0, c1, static_cast<int>(threadIdx.x),
                               static_cast<int>(blockDim.x), red,
                               red.rank == 0 && threadIdx.x == 0)) {
      red.row_done();
    }
  }
  // No CTA may leave while a peer could still read its shared memory.
  if (p.n_split > 1) cuda_cluster::sync();
}

// Small C: groups of G = 2^group_log2 lanes (inside one warp) per row.
template <typename TS, typename TT, int V>
__global__ void __launch_bounds__(kGroupThreads, 4) kd_rows_group_kernel(const DevParams p) {
  const int lg = p.group_log2;
  const int G = 1 << lg;
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid & 31;
  const int gl = tid & (G - 1);
  const int gi = tid >> lg;
  GroupReducer red;
  red.lse = dyn_smem() + gi * 2 * (2 + p.K);
  red.mask = G == 32 ? 0xffffffffu : (((1u << G) - 1u) << (lane & ~(G - 1)));
  red.width = G;
  red.leader = gl == 0;
  const int64_t gpb = static_cast<int64_t>(blockDim.x) >> lg;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * gpb + gi; row < p.n_rows;
       row += static_cast<int64_t>(gridDim.x) * gpb) {
    process_row<TS, TT, V>(p, row, 0, p.C, gl, G, red, gl == 0);
  }
}

// out = grad * row_scale[:, None]; the items of a row are nvec vectors of V, then the scalar tail.
template <typename T, int V>
__global__ void __launch_bounds__(kScaleThreads) scale_rows_kernel(const T* grad, const float* scale,
                                                                   T* out, int64_t n_rows,
                                                                   int64_t n_cols, int64_t stride) {
  const int64_t nvec = n_cols / V;
  const int64_t items = nvec + (n_cols - nvec * V);
  for (int64_t row = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; row < n_rows;
       row += static_cast<int64_t>(gridDim.y) * blockDim.y) {
    const float sc = scale[row];
    const T* g = grad + row * stride;
    T* o = out + row * stride;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      if (i < nvec) {
        float x[V];
        load_f<T, V, kPlain>(g + i * V, x);  // plain loads: out may alias grad
#pragma unroll
        for (int j = 0; j < V; ++j) x[j] *= sc;
        store_f<T, V, kStorePlain>(o + i * V, x);
      } else {
        const int64_t c = nvec * V + (i - nvec);
        float x[1];
        load_f<T, 1, kPlain>(g + c, x);
        x[0] *= sc;
        store_f<T, 1, kStorePlain>(o + c, x);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Host side.
// ------------------------------------------------------------------------------------------------
using mkd_fast::cuda_host::DeviceGuard;
using mkd_fast::cuda_host::throw_cuda;

bool is_aligned(const void* ptr, size_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename Kernel>
cudaError_t launch(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                   int cluster, const DevParams& dp) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  if (cluster > 1) {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = static_cast<unsigned>(cluster);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  } else {
    cfg.attrs = nullptr;
    cfg.numAttrs = 0;
  }
  return cudaLaunchKernelEx(&cfg, kernel, dp);
}

template <typename TS, typename TT, int V>
void launch_kd(DevParams dp, cudaStream_t stream, int cc_major) {
  const int64_t N = dp.n_rows, C = dp.C, K = dp.K;
  const int64_t items = 2 + K;

  if (C <= kGroupPathMaxC) {
    // Smallest power-of-two group giving each lane about two vectors, grown while the per-row
    // statistics of a block would not fit the shared-memory budget.
    int G = 32;
    while (G > 1 && int64_t(G / 2) * V * 2 >= C) G >>= 1;
    auto smem_of = [&](int g) {
      return int64_t(kGroupThreads / g) * items * 2 * int64_t(sizeof(float));
    };
    while (G < 32 && smem_of(G) > kGroupSmemBudget) G <<= 1;
    if (smem_of(G) <= kGroupSmemBudget) {
      int lg = 0;
      while ((1 << lg) < G) ++lg;
      dp.group_log2 = lg;
      dp.n_split = 1;
      dp.chunk = static_cast<int>(C);
      const int64_t gpb = kGroupThreads / G;
      const int64_t blocks = std::min(ceil_div(N, gpb), kMaxGridRows);
      const cudaError_t err =
          launch(kd_rows_group_kernel<TS, TT, V>, dim3(static_cast<unsigned>(blocks)),
                 dim3(kGroupThreads), static_cast<size_t>(smem_of(G)), stream, 1, dp);
      if (err != cudaSuccess) throw_cuda("kd_rows_cuda_launch (group kernel)", err);
      return;
    }
  }

  // CTA path.  Split a row over a cluster on sm_90+ when its bytes exceed kTargetChunkBytes.
  int n_split = 1;
  if (cc_major >= 9) {
    const int64_t bytes_per_class =
        int64_t(sizeof(TS)) + (dp.soft ? K * int64_t(sizeof(TT)) : 0);
    int64_t n = ceil_div(C * bytes_per_class, kTargetChunkBytes);
    n = std::min<int64_t>(n, kMaxSplit);
    n = std::min<int64_t>(n, C / kMinChunkElems);
    n_split = static_cast<int>(std::max<int64_t>(n, 1));
  }
  const size_t smem = (CtaReducer::kLse + 6 * static_cast<size_t>(items)) * sizeof(float);
  const int64_t rows_in_grid = std::min(N, kMaxGridRows);
  for (;;) {
    dp.n_split = n_split;
    dp.group_log2 = 0;
    dp.chunk = static_cast<int>(n_split == 1 ? C : ceil_div(ceil_div(C, n_split), 8) * 8);
    const cudaError_t err =
        launch(kd_rows_cta_kernel<TS, TT, V>, dim3(static_cast<unsigned>(rows_in_grid * n_split)),
               dim3(kCtaThreads), smem, stream, n_split, dp);
    if (err == cudaSuccess) return;
    if (n_split == 1) throw_cuda("kd_rows_cuda_launch (CTA kernel)", err);
    (void)cudaGetLastError();  // a cluster shape the device cannot schedule: try a smaller one
    n_split /= 2;
  }
}

template <typename TS, typename TT>
void launch_kd_types(const KdParams& kp, const DevParams& dp, cudaStream_t stream, int cc_major) {
  constexpr int V = (sizeof(TS) == 4 || sizeof(TT) == 4) ? 4 : 8;
  const bool many_rows = kp.n_rows > 1;
  bool vec = is_aligned(kp.student, V * sizeof(TS)) &&
             (!many_rows || kp.student_row_stride % V == 0);
  if (dp.soft) {
    vec = vec && is_aligned(kp.teacher, V * sizeof(TT)) &&
          (!many_rows || kp.teacher_row_stride % V == 0) &&
          (kp.n_teachers == 1 || kp.teacher_k_stride % V == 0);
  }
  if (kp.compute_grad) {
    vec = vec && is_aligned(kp.grad, V * sizeof(TS)) &&
          (!many_rows || kp.grad_row_stride % V == 0);
  }
  if (vec) {
    launch_kd<TS, TT, V>(dp, stream, cc_major);
  } else {
    launch_kd<TS, TT, 1>(dp, stream, cc_major);
  }
}

template <typename TS>
void launch_kd_teacher(const KdParams& kp, const DevParams& dp, cudaStream_t stream, int cc_major) {
  switch (kp.teacher_type) {
    case mkd_fast::kFloat32: launch_kd_types<TS, float>(kp, dp, stream, cc_major); break;
    case mkd_fast::kBFloat16: launch_kd_types<TS, __nv_bfloat16>(kp, dp, stream, cc_major); break;
    case mkd_fast::kFloat16: launch_kd_types<TS, __half>(kp, dp, stream, cc_major); break;
    default: throw std::runtime_error("kd_rows_cuda_launch: unsupported teacher_type");
  }
}

template <typename T>
void launch_scale(const void* grad, const float* row_scale, void* out, int64_t n_rows,
                  int64_t n_cols, int64_t row_stride, cudaStream_t stream) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  const bool vec = is_aligned(grad, 16) && is_aligned(out, 16) &&
                   (n_rows <= 1 || row_stride % V == 0);
  const int vw = vec ? V : 1;
  const int64_t nvec = n_cols / vw;
  const int64_t items = nvec + (n_cols - nvec * vw);
  int tpr = 1;  // threads per row: a power of two covering the row's items, at most a block
  while (tpr < kScaleThreads && tpr < items) tpr <<= 1;
  const int rpb = kScaleThreads / tpr;
  const dim3 block(static_cast<unsigned>(tpr), static_cast<unsigned>(rpb));
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(ceil_div(items, tpr), 65535)),
                  static_cast<unsigned>(std::min<int64_t>(ceil_div(n_rows, rpb), 65535)));
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  cfg.attrs = nullptr;
  cfg.numAttrs = 0;
  const T* g = static_cast<const T*>(grad);
  T* o = static_cast<T*>(out);
  cudaError_t err;
  if (vec) {
    err = cudaLaunchKernelEx(&cfg, scale_rows_kernel<T, V>, g, row_scale, o, n_rows, n_cols,
                             row_stride);
  } else {
    err = cudaLaunchKernelEx(&cfg, scale_rows_kernel<T, 1>, g, row_scale, o, n_rows, n_cols,
                             row_stride);
  }
  if (err != cudaSuccess) throw_cuda("scale_rows_cuda_launch", err);
}

}  // namespace

void kd_rows_cuda_launch(const mkd_fast::KdParams& p, int device_index, void* stream) {
  using namespace mkd_fast;
  if (p.n_rows < 0 || p.n_classes < 0) throw std::runtime_error("kd_rows_cuda_launch: negative shape");
  if (p.n_rows == 0) return;
  if (p.n_classes > kMaxClasses) {
    throw std::runtime_error("kd_rows_cuda_launch: n_classes too large (" +
                             std::to_string(p.n_classes) + ")");
  }
  if (p.n_teachers < 1 || p.n_teachers > kMaxTeachers) {
    throw std::runtime_error("kd_rows_cuda_launch: n_teachers must be in [1, " +
                             std::to_string(kMaxTeachers) + "], got " +
                             std::to_string(p.n_teachers));
  }
  if (p.divergence < kKL || p.divergence > kMSE) {
    throw std::runtime_error("kd_rows_cuda_launch: unknown divergence " +
                             std::to_string(p.divergence));
  }
  if (p.teacher_format < kLogits || p.teacher_format > kProbs) {
    throw std::runtime_error("kd_rows_cuda_launch: unknown teacher_format " +
                             std::to_string(p.teacher_format));
  }
  if (!(p.temperature > 0.0) || !std::isfinite(p.temperature)) {
    throw std::runtime_error("kd_rows_cuda_launch: temperature must be positive and finite");
  }
  if (p.student == nullptr || p.teacher == nullptr || p.loss_rows == nullptr ||
      (p.compute_grad && p.grad == nullptr)) {
    throw std::runtime_error("kd_rows_cuda_launch: null data pointer");
  }

  const double T = p.temperature;
  const bool hard = p.alpha > 0.0 && p.labels != nullptr;
  const bool soft = p.alpha < 1.0;
  const double soft_scale = (p.scale_t2 && p.divergence != kMSE) ? T * T : 1.0;

  DevParams dp = {};
  dp.student = p.student;
  dp.teacher = p.teacher;
  dp.labels = p.labels;
  dp.mask = p.mask;
  dp.row_weight = static_cast<const float*>(p.row_weight);
  dp.loss_scale = static_cast<float>(p.loss_scale);
  dp.loss = static_cast<float*>(p.loss_rows);
  dp.grad = p.compute_grad ? p.grad : nullptr;
  dp.n_rows = p.n_rows;
  dp.s_stride = p.student_row_stride;
  dp.t_stride = p.teacher_row_stride;
  dp.t_kstride = p.teacher_k_stride;
  dp.g_stride = p.grad_row_stride;
  dp.ignore_index = p.ignore_index;
  dp.C = static_cast<int>(p.n_classes);
  dp.K = static_cast<int>(p.n_teachers);
  dp.div = p.divergence;
  dp.invT = 1.0f / static_cast<float>(T);
  dp.alpha = static_cast<float>(p.alpha);
  dp.beta = static_cast<float>(p.beta);
  dp.omb = static_cast<float>(1.0 - p.beta);
  dp.soft_mul = static_cast<float>((1.0 - p.alpha) * soft_scale);
  dp.gcoef = static_cast<float>((1.0 - p.alpha) * soft_scale / T);
  dp.gcoef_jsd = static_cast<float>((1.0 - p.alpha) * soft_scale / T * (1.0 - p.beta));
  dp.mse_gcoef =
      p.n_classes > 0 ? static_cast<float>((1.0 - p.alpha) * 2.0 / double(p.n_classes)) : 0.f;
  dp.invC = p.n_classes > 0 ? 1.0f / static_cast<float>(p.n_classes) : 0.f;
  dp.invK = 1.0f / static_cast<float>(p.n_teachers);
  dp.logK = static_cast<float>(std::log(static_cast<double>(p.n_teachers)));
  dp.probs = p.teacher_format == kProbs;
  dp.is_kl = p.divergence == kKL;
  dp.hard = hard;
  dp.soft = soft;
  dp.stats = soft && p.divergence != kMSE;
  dp.same_t = dp.stats && T == 1.0;
  dp.hard_own = hard && !dp.same_t;
  dp.compute_grad = p.compute_grad;

  DeviceGuard guard(device_index);
  int cc_major = 0;
  const cudaError_t err =
      cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, device_index);
  if (err != cudaSuccess) throw_cuda("cudaDeviceGetAttribute", err);
  cudaStream_t st = static_cast<cudaStream_t>(stream);

  switch (p.student_type) {
    case kFloat32: launch_kd_teacher<float>(p, dp, st, cc_major); break;
    case kBFloat16: launch_kd_teacher<__nv_bfloat16>(p, dp, st, cc_major); break;
    case kFloat16: launch_kd_teacher<__half>(p, dp, st, cc_major); break;
    default: throw std::runtime_error("kd_rows_cuda_launch: unsupported student_type");
  }
}

void scale_rows_cuda_launch(const void* grad, int32_t grad_type, const float* row_scale, void* out,
                            int64_t n_rows, int64_t n_cols, int64_t row_stride, int device_index,
                            void* stream) {
  using namespace mkd_fast;
  if (n_rows < 0 || n_cols < 0) throw std::runtime_error("scale_rows_cuda_launch: negative shape");
  if (n_rows == 0 || n_cols == 0) return;
  if (grad == nullptr || row_scale == nullptr || out == nullptr) {
    throw std::runtime_error("scale_rows_cuda_launch: null data pointer");
  }
  DeviceGuard guard(device_index);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (grad_type) {
    case kFloat32:
      launch_scale<float>(grad, row_scale, out, n_rows, n_cols, row_stride, st);
      break;
    case kBFloat16:
      launch_scale<__nv_bfloat16>(grad, row_scale, out, n_rows, n_cols, row_stride, st);
      break;
    case kFloat16:
      launch_scale<__half>(grad, row_scale, out, n_rows, n_cols, row_stride, st);
      break;
    default: throw std::runtime_error("scale_rows_cuda_launch: unsupported grad_type");
  }
}
