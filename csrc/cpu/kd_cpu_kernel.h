// Entry points of the CPU kernel (raw pointers only; the torch binding lives in kd_cpu_binding.cpp).
#pragma once
#include <cstdint>

#include "../kd_params.h"

namespace mkd_fast {
namespace cpu {

// Loss per row into p.loss_rows and, when p.compute_grad, d loss_row / d student into p.grad.
void kd_rows_cpu(const KdParams& p);

// out[r, c] = grad[r, c] * row_scale[r] (row_scale float32, or float64 for float64 grads); out may alias grad.
void scale_rows_cpu(const void* grad, int32_t grad_type, const void* row_scale, void* out, int64_t n_rows,
                    int64_t n_cols, int64_t in_stride, int64_t out_stride);

// "AVX512", "AVX2" or "DEFAULT": the vector instruction set this build was compiled for.
const char* compiled_capability();

}  // namespace cpu
}  // namespace mkd_fast
