// Host entry point of the CUDA LSTM recurrence (implemented in lstm_cuda_kernels.cu).
// Free of torch and CUDA headers, like kd_cuda.h: the binding (lstm_cuda_binding.cpp) and the kernels meet
// only here.  Design notes: csrc/cuda/README.md ("LSTM inference").
#pragma once
#include <cstdint>

#include "../kd_params.h"

namespace mkd_fast {
namespace cuda {

// One layer (both directions) of an LSTM over a batch whose rows are sorted by length, longest first.
// All pointers are device pointers.  H = hidden, D = directions, T = steps, B = rows.
//   gates_x  [N][D][H][4] float32: input projection of every packed row plus both biases, the four
//            gates (i, f, g, o) of a unit adjacent; packed row of (t, j) = offsets[t] + j, j < batch_sizes[t].
//   w_hh     [D][H (input unit k)][H (unit u)][4] float32: w_hh[d][k][u][g] = W_hh_d[g * H + u, k].
//   lengths  [B] of the sorted rows; batch_sizes / offsets [T].
// h of (t, j, d) goes to out + out_t[t] + out_row[j] + d * H (H elements of out_type); the final h / c of
// (j, d) to h_n / c_n + d * state_dir_stride + state_row[j] (state_type).
struct LstmCudaLayer {
  int32_t hidden = 0;
  int32_t directions = 1;
  int64_t steps = 0;
  int64_t rows = 0;
  const float* gates_x = nullptr;
  const float* w_hh = nullptr;
  const int64_t* lengths = nullptr;
  const int64_t* batch_sizes = nullptr;
  const int64_t* offsets = nullptr;
  void* out = nullptr;
  int32_t out_type = kFloat32;
  const int64_t* out_t = nullptr;
  const int64_t* out_row = nullptr;
  void* h_n = nullptr;
  void* c_n = nullptr;
  int32_t state_type = kFloat32;
  int64_t state_dir_stride = 0;
  const int64_t* state_row = nullptr;
  // Per-step path only: 3 * D * B * H floats (two h buffers and c); zeroed by the launcher.
  float* workspace = nullptr;
};

enum LstmCudaPath : int32_t { kLstmAuto = 0, kLstmPersistent = 1, kLstmPerStep = 2 };

// Workspace floats the per-step path needs (allocate it whatever the path: the choice is made inside).
inline int64_t lstm_cuda_workspace_floats(const LstmCudaLayer& a) {
  return 3 * int64_t(a.directions) * a.rows * a.hidden;
}

// Runs the layer on `stream` (a cudaStream_t as void*) of device `device_index`; `path` forces a path
// (kLstmAuto: the persistent kernel when its weights fit on chip, else the per-step kernel).  Returns the
// path that ran.  Throws std::runtime_error on invalid parameters or a failed launch.
int32_t lstm_layer_cuda_launch(const LstmCudaLayer& a, int device_index, void* stream, int32_t path);

}  // namespace cuda
}  // namespace mkd_fast
