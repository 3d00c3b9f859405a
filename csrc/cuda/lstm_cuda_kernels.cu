// CUDA recurrence of one LSTM layer (both directions) for inference.  No torch header: `nvcc -c` alone
// compiles it (make check-cuda).  The input projection (one GEMM per layer) runs before, in the binding.
//
// Two kernels (design and limits in csrc/cuda/README.md, "LSTM inference"):
//
// lstm_persistent_kernel: one launch per layer.  A cluster of N CTAs (N = 1 on sm_80) owns one direction
//   and one tile of R rows for all time steps.  CTA `rank` keeps the recurrent weights of its H / N hidden
//   units (all four gates, all H inputs) in shared memory for the whole sequence; each step it computes
//   those units for the tile's active rows (fused gates, float32), writes the new h of its units into the
//   h buffer of every CTA of the cluster (distributed shared memory), and one cluster barrier ends the
//   step.  h is double-buffered, so reading step s and writing step s + 1 never race.
// lstm_step_kernel: fallback when the weights do not fit on chip (or no cluster can be scheduled): one
//   launch per time step for both directions, weights read from global memory (L2-resident), h and c in
//   a global workspace.  No cuBLAS.
//
// Both: rows are sorted by length, so the active rows of a step are a prefix (no work on padding);
// forward rows stop at their last token, backward rows start there with a zero state.

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda_cluster.cuh"
#include "cuda_device_guard.h"
#include "lstm_cuda.h"

namespace mkd_fast {
namespace cuda {
namespace {

constexpr int kRowsPerThread = 4;   // rows one thread of the persistent kernel accumulates
constexpr int kMaxTileRows = 32;    // rows per cluster of the persistent kernel
constexpr int kMaxCluster = 8;      // portable cluster size
constexpr int kMaxThreads = 512;   // with __launch_bounds__: up to 128 registers per thread (uses ~80)
constexpr int kStepUnits = 32;      // per-step kernel: units x rows per block
constexpr int kStepRows = 8;

struct PersistentConfig {
  int cluster;   // N
  int units;     // U = ceil(H / N) hidden units per CTA
  int rows;      // R, rows of a tile (multiple of kRowsPerThread)
  int h_stride;  // floats per row of the shared h buffers (odd: rows fall in different banks)
};

// ------------------------------------------------------------------------------------------------
// Device helpers.
// ------------------------------------------------------------------------------------------------
__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }

__device__ __forceinline__ void store_elem(void* base, int64_t i, int32_t type, float v) {
  if (type == kBFloat16) {
    static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v);
  } else if (type == kFloat16) {
    static_cast<__half*>(base)[i] = __float2half_rn(v);
  } else {
    static_cast<float*>(base)[i] = v;
  }
}

// pre: the four pre-activations (i, f, g, o) of one unit and row; c: its cell state, updated; returns h.
__device__ __forceinline__ float lstm_cell(const float4& pre, float& c) {
  const float i = sigmoid_f(pre.x), f = sigmoid_f(pre.y), g = tanhf(pre.z), o = sigmoid_f(pre.w);
  c = fmaf(f, c, i * g);
  return o * tanhf(c);
}

__device__ __forceinline__ void fma4(float4& acc, float h, const float4& w) {
  acc.x = fmaf(h, w.x, acc.x);
  acc.y = fmaf(h, w.y, acc.y);
  acc.z = fmaf(h, w.z, acc.z);
  acc.w = fmaf(h, w.w, acc.w);
}

// Output and final-state stores of (t, sorted row j, direction d, unit u).
__device__ __forceinline__ void emit(const LstmCudaLayer& a, int64_t t, int64_t j, int d, int u, float h, float c) {
  store_elem(a.out, a.out_t[t] + a.out_row[j] + int64_t(d) * a.hidden + u, a.out_type, h);
  const int64_t len = a.lengths[j];
  if ((d == 0 && t == len - 1) || (d != 0 && t == 0)) {  // forward: last token; backward: first
    const int64_t s = int64_t(d) * a.state_dir_stride + a.state_row[j] + u;
    store_elem(a.h_n, s, a.state_type, h);
    store_elem(a.c_n, s, a.state_type, c);
  }
}

// Cluster helpers that reduce to the single-CTA case when the tile is one CTA (N = 1, any arch).
__device__ __forceinline__ void sync_tile(int n) {
  if (n > 1) {
    cuda_cluster::sync();
  } else {
    __syncthreads();
  }
}

__device__ __forceinline__ int tile_rank(int n) { return n == 1 ? 0 : cuda_cluster::rank(); }

__device__ __forceinline__ float* peer_smem(float* p, int rank, int n) {
  return n == 1 ? p : cuda_cluster::peer(p, rank);
}

// ------------------------------------------------------------------------------------------------
// Persistent kernel: grid = N * tiles * D CTAs, clusters of N consecutive CTAs.
// Thread (uu, rg) = (threadIdx.x % U, threadIdx.x / U) owns unit u0 + uu for tile rows rg * 4 .. rg * 4 + 3.
// Shared memory: w [H][U] float4 (k-major, the four gates of a unit in one float4), then h [2][R][Hs].
// ------------------------------------------------------------------------------------------------
__global__ void __launch_bounds__(kMaxThreads) lstm_persistent_kernel(const LstmCudaLayer a, const PersistentConfig cfg) {
  extern __shared__ float4 smem[];
  const int H = a.hidden, D = a.directions, N = cfg.cluster, U = cfg.units, R = cfg.rows, Hs = cfg.h_stride;
  const int rank = tile_rank(N);
  const int group = static_cast<int>(blockIdx.x) / N;
  const int d = group % D;
  const int64_t r0 = int64_t(group / D) * R;
  const int64_t r1 = min(a.rows, r0 + R);
  const int u0 = rank * U;
  const int nu = max(0, min(U, H - u0));

  float4* w_s = smem;
  float* h_s = reinterpret_cast<float*>(smem + size_t(H) * U);
  const float4* w_g = reinterpret_cast<const float4*>(a.w_hh) + size_t(d) * H * H;
  for (int i = threadIdx.x; i < H * U; i += blockDim.x) {
    const int k = i / U, uu = i % U;
    w_s[i] = uu < nu ? w_g[size_t(k) * H + u0 + uu] : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  for (int i = threadIdx.x; i < 2 * R * Hs; i += blockDim.x) h_s[i] = 0.f;
  sync_tile(N);  // every CTA's buffers are zero before any peer writes into them

  const int uu = static_cast<int>(threadIdx.x) % U;
  const int rg = static_cast<int>(threadIdx.x) / U;
  const int row0 = rg * kRowsPerThread;
  const bool owner = uu < nu && row0 < R;
  const float4* gx4 = reinterpret_cast<const float4*>(a.gates_x);
  float c[kRowsPerThread];
#pragma unroll
  for (int j = 0; j < kRowsPerThread; ++j) c[j] = 0.f;

  int parity = 0;
  for (int64_t s = 0; s < a.steps; ++s) {
    const int64_t t = d == 0 ? s : a.steps - 1 - s;
    const int64_t m = max(int64_t(0), min(a.batch_sizes[t], r1) - r0);  // active rows of the tile (uniform)
    if (m == 0) {
      if (d == 0) break;  // forward: no row of the tile is this long
      continue;           // backward: the tile's rows start later
    }
    const float* h_cur = h_s + parity * R * Hs;
    float* h_next = h_s + (parity ^ 1) * R * Hs;
    if (owner && row0 < m) {
      const int u = u0 + uu;
      float4 acc[kRowsPerThread];
#pragma unroll
      for (int j = 0; j < kRowsPerThread; ++j) {
        const int64_t row = row0 + j;
        acc[j] = row < m ? gx4[((a.offsets[t] + r0 + row) * D + d) * H + u] : make_float4(0.f, 0.f, 0.f, 0.f);
      }
      for (int k = 0; k < H; ++k) {
        const float4 w = w_s[k * U + uu];
#pragma unroll
        for (int j = 0; j < kRowsPerThread; ++j) fma4(acc[j], h_cur[(row0 + j) * Hs + k], w);
      }
#pragma unroll
      for (int j = 0; j < kRowsPerThread; ++j) {
        const int row = row0 + j;
        if (row < m) {
          const float h = lstm_cell(acc[j], c[j]);
          for (int q = 0; q < N; ++q) peer_smem(h_next, q, N)[row * Hs + u] = h;
          emit(a, t, r0 + row, d, u, h, c[j]);
        }
      }
    }
    sync_tile(N);  // step s + 1 reads what every CTA wrote; also keeps peers' smem alive until then
    parity ^= 1;
  }
}

// ------------------------------------------------------------------------------------------------
// Per-step kernel: grid (ceil(H / 32), ceil(B / 8), D), block (32, 8); thread = (unit, sorted row).
// ------------------------------------------------------------------------------------------------
__global__ void __launch_bounds__(kStepUnits * kStepRows) lstm_step_kernel(const LstmCudaLayer a, int64_t s, int parity) {
  const int H = a.hidden, D = a.directions;
  const int d = blockIdx.z;
  const int64_t t = d == 0 ? s : a.steps - 1 - s;
  const int64_t row = int64_t(blockIdx.y) * kStepRows + threadIdx.y;
  const int u = static_cast<int>(blockIdx.x) * kStepUnits + static_cast<int>(threadIdx.x);
  if (row >= a.batch_sizes[t] || u >= H) return;
  const size_t plane = size_t(a.rows) * H;
  const float* h_cur = a.workspace + (size_t(parity) * D + d) * plane + size_t(row) * H;
  float* h_next = a.workspace + (size_t(parity ^ 1) * D + d) * plane + size_t(row) * H;
  float* c_row = a.workspace + (size_t(2) * D + d) * plane + size_t(row) * H;
  float4 acc = reinterpret_cast<const float4*>(a.gates_x)[((a.offsets[t] + row) * D + d) * H + u];
  const float4* w = reinterpret_cast<const float4*>(a.w_hh) + size_t(d) * H * H + u;
  for (int k = 0; k < H; ++k) fma4(acc, h_cur[k], __ldg(w + size_t(k) * H));
  float c = c_row[u];
  const float h = lstm_cell(acc, c);
  c_row[u] = c;
  h_next[u] = h;
  emit(a, t, row, d, u, h, c);
}

// ------------------------------------------------------------------------------------------------
// Host side.
// ------------------------------------------------------------------------------------------------
[[noreturn]] void fail(const char* what, cudaError_t err) {
  cuda_host::throw_cuda(std::string("lstm_layer_cuda_launch: ") + what, err);
}

size_t persistent_smem(const LstmCudaLayer& a, const PersistentConfig& c) {
  return size_t(a.hidden) * c.units * sizeof(float4) + size_t(2) * c.rows * c.h_stride * sizeof(float);
}

int persistent_threads(const PersistentConfig& c) {
  const int t = c.units * (c.rows / kRowsPerThread);
  return (t + 31) / 32 * 32;
}

// The smallest cluster (then the largest tile) whose weights slice and h buffers fit the shared memory.
bool choose_persistent(const LstmCudaLayer& a, int cc_major, int smem_optin, PersistentConfig* out) {
  const int H = a.hidden;
  const int64_t rows4 = (a.rows + kRowsPerThread - 1) / kRowsPerThread * kRowsPerThread;
  for (int n = 1; n <= kMaxCluster; n *= 2) {
    if (n > 1 && cc_major < 9) break;
    PersistentConfig c;
    c.cluster = n;
    c.units = (H + n - 1) / n;
    c.h_stride = H | 1;
    if (n > 1 && int64_t(c.units) * (n - 1) >= H) break;  // some CTA would own no unit: larger n only worse
    for (int r = static_cast<int>(std::min<int64_t>(kMaxTileRows, rows4)); r >= kRowsPerThread; r /= 2) {
      c.rows = r / kRowsPerThread * kRowsPerThread;
      if (persistent_threads(c) <= kMaxThreads && persistent_smem(a, c) <= size_t(smem_optin)) {
        *out = c;
        return true;
      }
    }
  }
  return false;
}

cudaError_t launch_persistent(const LstmCudaLayer& a, const PersistentConfig& c, cudaStream_t stream) {
  const size_t smem = persistent_smem(a, c);
  cudaError_t err = cudaFuncSetAttribute(lstm_persistent_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const int64_t tiles = (a.rows + c.rows - 1) / c.rows;
  const int64_t blocks = tiles * a.directions * c.cluster;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(blocks));
  cfg.blockDim = dim3(static_cast<unsigned>(persistent_threads(c)));
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  if (c.cluster > 1) {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = static_cast<unsigned>(c.cluster);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    int max_clusters = 0;  // can a cluster of this shape be resident at all?
    err = cudaOccupancyMaxActiveClusters(&max_clusters, lstm_persistent_kernel, &cfg);
    if (err != cudaSuccess) return err;
    if (max_clusters < 1) return cudaErrorInvalidConfiguration;
  }
  return cudaLaunchKernelEx(&cfg, lstm_persistent_kernel, a, c);
}

void launch_per_step(const LstmCudaLayer& a, cudaStream_t stream) {
  const int64_t row_blocks = (a.rows + kStepRows - 1) / kStepRows;
  if (row_blocks > 65535) {
    throw std::runtime_error("lstm_layer_cuda_launch: a batch of " + std::to_string(a.rows) + " sequences exceeds "
                             "the per-step kernel's limit of " + std::to_string(65535 * kStepRows) +
                             " (grid.y blocks x rows per block); split the batch");
  }
  cudaError_t err = cudaMemsetAsync(a.workspace, 0, size_t(lstm_cuda_workspace_floats(a)) * sizeof(float), stream);
  if (err != cudaSuccess) fail("cudaMemsetAsync", err);
  const dim3 grid((a.hidden + kStepUnits - 1) / kStepUnits, static_cast<unsigned>(row_blocks),
                  static_cast<unsigned>(a.directions));
  const dim3 block(kStepUnits, kStepRows);
  for (int64_t s = 0; s < a.steps; ++s) {
    lstm_step_kernel<<<grid, block, 0, stream>>>(a, s, static_cast<int>(s & 1));
  }
  err = cudaGetLastError();
  if (err != cudaSuccess) fail("per-step kernel", err);
}

}  // namespace

int32_t lstm_layer_cuda_launch(const LstmCudaLayer& a, int device_index, void* stream_ptr, int32_t path) {
  if (a.hidden < 1 || (a.directions != 1 && a.directions != 2) || a.rows < 0 || a.steps < 0) {
    throw std::runtime_error("lstm_layer_cuda_launch: invalid sizes");
  }
  if (a.rows == 0 || a.steps == 0) return kLstmAuto;
  cuda_host::DeviceGuard guard(device_index);
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  if (path != kLstmPerStep) {
    int major = 0, smem_optin = 0;
    cudaError_t err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_index);
    if (err != cudaSuccess) fail("cudaDeviceGetAttribute", err);
    err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device_index);
    if (err != cudaSuccess) fail("cudaDeviceGetAttribute", err);
    // Clusters need the kernel's sm_90 code: a build that only JIT-compiles older PTX on this device lacks the
    // cluster branch (it would trap), so such a build plans as if for compute capability 8.
    cudaFuncAttributes fattr;
    err = cudaFuncGetAttributes(&fattr, lstm_persistent_kernel);
    if (err != cudaSuccess) fail("cudaFuncGetAttributes", err);
    if (fattr.ptxVersion < 90) major = std::min(major, 8);
    PersistentConfig c;
    if (choose_persistent(a, major, smem_optin, &c)) {
      err = launch_persistent(a, c, stream);
      if (err == cudaSuccess) return kLstmPersistent;
      (void)cudaGetLastError();  // a shape the device refuses: the per-step kernel always runs
      if (path == kLstmPersistent) fail("persistent kernel", err);
    } else if (path == kLstmPersistent) {
      throw std::runtime_error("lstm_layer_cuda_launch: the persistent kernel's weights do not fit on chip");
    }
  }
  if (a.workspace == nullptr) throw std::runtime_error("lstm_layer_cuda_launch: the per-step path needs a workspace");
  launch_per_step(a, stream);
  return kLstmPerStep;
}

}  // namespace cuda
}  // namespace mkd_fast
