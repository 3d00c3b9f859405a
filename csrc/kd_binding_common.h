// What the CPU and CUDA torch bindings share: dtype codes and the filling of KdParams from row-shaped
// tensors.  Needs only torch's CPU headers, so the CUDA binding still compiles against CPU-only torch.
#pragma once
#include <torch/extension.h>

#include <cmath>

#include "kd_params.h"

namespace mkd_fast {

// The kernels' element-type code of `t`, or an error naming the argument.
inline int32_t elem_type(const at::Tensor& t, const char* name, bool allow_double) {
  switch (t.scalar_type()) {
    case at::kFloat: return kFloat32;
    case at::kBFloat16: return kBFloat16;
    case at::kHalf: return kFloat16;
    case at::kDouble:
      if (allow_double) return kFloat64;
      break;
    default: break;
  }
  TORCH_CHECK(false, name, ": expected float32, bfloat16, float16", allow_double ? " or float64" : "",
              " on this backend, got ", t.scalar_type());
  return 0;
}

// Shapes, options and data pointers of one call; per-row tensors and outputs are set by the caller.
inline KdParams make_params(const at::Tensor& student, const at::Tensor& teacher, double temperature,
                            int64_t divergence, double beta, int64_t teacher_format, double alpha,
                            int64_t ignore_index, bool scale_t2, bool compute_grad, double loss_scale,
                            bool allow_double) {
  const int64_t n_rows = student.size(0), n_classes = student.size(1);
  TORCH_CHECK(teacher.size(1) == n_rows && teacher.size(2) == n_classes,
              "teacher_logits: expected shape [K, ", n_rows, ", ", n_classes, "], got ", teacher.sizes());
  TORCH_CHECK(teacher.size(0) >= 1, "teacher_logits: needs at least one teacher");
  TORCH_CHECK(temperature > 0.0 && std::isfinite(temperature), "temperature: expected a finite value > 0, got ",
              temperature);
  TORCH_CHECK(divergence >= kKL && divergence <= kMSE, "divergence: unknown code ", divergence);
  TORCH_CHECK(teacher_format >= kLogits && teacher_format <= kProbs, "teacher_format: unknown code ",
              teacher_format);
  TORCH_CHECK(alpha >= 0.0 && alpha <= 1.0, "alpha: expected a value in [0, 1], got ", alpha);
  TORCH_CHECK(divergence != kJSD || (beta > 0.0 && beta < 1.0),
              "beta: expected 0 < beta < 1 for jsd (0 and 1 are mapped to kl / reverse_kl), got ", beta);
  KdParams p;
  p.n_rows = n_rows;
  p.n_classes = n_classes;
  p.n_teachers = teacher.size(0);
  p.student_row_stride = student.stride(0);
  p.teacher_k_stride = teacher.stride(0);
  p.teacher_row_stride = teacher.stride(1);
  p.student = student.data_ptr();
  p.teacher = teacher.data_ptr();
  p.student_type = elem_type(student, "student_logits", allow_double);
  p.teacher_type = elem_type(teacher, "teacher_logits", allow_double);
  p.divergence = static_cast<int32_t>(divergence);
  p.teacher_format = static_cast<int32_t>(teacher_format);
  p.temperature = temperature;
  p.beta = beta;
  p.alpha = alpha;
  p.ignore_index = ignore_index;
  p.scale_t2 = scale_t2;
  p.compute_grad = compute_grad;
  p.loss_scale = loss_scale;
  return p;
}

}  // namespace mkd_fast
