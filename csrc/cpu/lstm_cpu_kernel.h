// One layer of an LSTM on the CPU, both directions (raw pointers; the torch binding is lstm_cpu_binding.cpp).
//
// Rows are the batch's sequences sorted by length, longest first: at time t the first batch_sizes[t] rows
// are active.  The layer runs as independent tasks (direction d, tile of rows) in one parallel region; a
// task walks its time steps in chunks: it gathers the chunk's input rows, projects them with the caller's
// GEMM (gates_x = x W_ih_d^T + biases) into a task-local buffer, then runs the recurrence over the chunk.
//
// Layouts (V = lstm_block_width(), floats per vector; Hp = H rounded up to V; nblk = Hp / V):
//   gate rows [4 * H] per direction: gates i, f, g, o as in nn.LSTM, grouped per block of V units: block b
//             (units b*V .. b*V + n - 1, n = min(V, H - b*V)) starts at 4 * b * V and holds gate g's n
//             values at g * n.  (The projection's weight rows are permuted into this order once.)
//   w_hh      [D][nblk][H][4][V]: w_hh[d][b][k][g][v] = W_hh_d[g * H + b * V + v, k], zero for units >= H,
//             so one pass over k yields the four gates of V units and the gate math runs in registers.
#pragma once
#include <cstdint>
#include <functional>

#include "../kd_params.h"

namespace mkd_fast {
namespace cpu {

// gx[n][4H] = x[n][in_features] W_ih_d^T + b_ih_d + b_hh_d, rows in the block order above.
using LstmProjection = std::function<void(int64_t direction, const float* x, int64_t n, float* gx)>;

struct LstmLayerArgs {
  int64_t hidden = 0;      // H
  int64_t directions = 1;  // D (1 or 2)
  int64_t steps = 0;       // T: entries of batch_sizes, out_t (and in_t)
  int64_t rows = 0;        // B
  const int64_t* batch_sizes = nullptr;  // [T], non-increasing
  const int64_t* lengths = nullptr;      // [B] of the sorted rows
  const float* w_hh = nullptr;

  // Input element (t, j) starts at in + in_t[t] + in_row[j] (element offsets).  Either in_features
  // values of in_type, projected by `project`, or (table != nullptr) one int64 token id whose gate row,
  // for direction d, is table + id * D * 4H + d * 4H.
  const void* in = nullptr;
  int32_t in_type = kFloat32;
  int64_t in_features = 0;
  const int64_t* in_t = nullptr;
  const int64_t* in_row = nullptr;
  LstmProjection project;
  const float* table = nullptr;

  // h of (t, j, d) goes to out + out_t[t] + out_row[j] + d * H (H elements of out_type).  zero_tail: the
  // d = 0 task of a row also zeroes out + out_t[t] + out_row[j] for t >= length (D * H elements).
  void* out = nullptr;
  int32_t out_type = kFloat32;
  const int64_t* out_t = nullptr;
  const int64_t* out_row = nullptr;
  bool zero_tail = false;

  // Final states: h_n / c_n + d * state_dir_stride + state_row[j] (H elements of state_type).
  void* h_n = nullptr;
  void* c_n = nullptr;
  int32_t state_type = kFloat32;
  int64_t state_dir_stride = 0;
  const int64_t* state_row = nullptr;

  int64_t tile_rows = 0;    // rows per task; 0: chosen from the batch and the thread count
  int64_t chunk_steps = 0;  // time steps per projection chunk; 0: chosen from a cache budget
};

// Runs the layer; exceptions of `project` propagate.
void lstm_layer_cpu(const LstmLayerArgs& a);

// Floats per vector the kernel was compiled for (the V of the layouts above).
int64_t lstm_block_width();

}  // namespace cpu
}  // namespace mkd_fast
