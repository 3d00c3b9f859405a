// Host-side entry points of the CUDA backend (implemented in kd_cuda_kernels.cu).
// Deliberately free of torch and CUDA headers: the pybind11 binding (compiled against torch, possibly a
// CPU-only build of it) and the kernels (compiled by nvcc without torch) meet only here.
#pragma once
#include <cstdint>

#include "../kd_params.h"

// Computes loss_rows (and, when p.compute_grad, the gradient w.r.t. the student) for every row of `p`
// in a single kernel launch on `stream` (a cudaStream_t passed as void*), on device `device_index`.
// The current device is restored before returning.  n_rows == 0 launches nothing.
// p.row_weight, when set, must point to float32 (the CUDA kernels take no float64 student).
// Throws std::runtime_error (with the CUDA error text) on invalid parameters or launch failure.
void kd_rows_cuda_launch(const mkd_fast::KdParams& p, int device_index, void* stream);

// out[r, c] = grad[r, c] * row_scale[r] for r < n_rows, c < n_cols, computed in float32 and stored in
// grad's element type (grad_type is a mkd_fast::ElemType: kFloat32, kBFloat16 or kFloat16).  grad and
// out share the row stride `row_stride` (in elements, class stride 1); out may alias grad.
// Throws std::runtime_error on invalid parameters or launch failure.
void scale_rows_cuda_launch(const void* grad, int32_t grad_type, const float* row_scale, void* out,
                            int64_t n_rows, int64_t n_cols, int64_t row_stride, int device_index,
                            void* stream);
