// Plain description of one fused distillation-loss call, shared by the CPU and CUDA kernels.
// Deliberately free of torch and CUDA headers so that every backend (and nvcc -c in CI) can use it.
//
// Semantics (the same as mkd_fast/reference.py, which is the test oracle):
//   rows r in [0, n_rows), classes c in [0, n_classes), teachers k in [0, n_teachers)
//   student logits  s[r, c]     at student + r * student_row_stride + c
//   teacher values  t[k, r, c]  at teacher + k * teacher_k_stride + r * teacher_row_stride + c
//   A row is *active* when (mask == nullptr || mask[r]) && (labels == nullptr || labels[r] != ignore_index).
//   Inactive rows: loss_rows[r] = 0 and grad row = 0.
//   loss_rows[r] = alpha * CE(s at T=1, labels[r]) + (1 - alpha) * soft_scale * soft(r)
//   grad[r, c]   = d loss_rows[r] / d s[r, c]   (written only when compute_grad)
//   Both are then multiplied by loss_scale * (row_weight ? row_weight[r] : 1).
#pragma once
#include <cstdint>

namespace mkd_fast {

enum Divergence : int32_t { kKL = 0, kReverseKL = 1, kJSD = 2, kSoftCE = 3, kMSE = 4 };
enum TeacherFormat : int32_t { kLogits = 0, kLogProbs = 1, kProbs = 2 };
// Element types understood by the kernels (values chosen by the Python side).
enum ElemType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kFloat64 = 3 };

struct KdParams {
  int64_t n_rows = 0;
  int64_t n_classes = 0;
  int64_t n_teachers = 1;
  int64_t student_row_stride = 0;  // in elements; class stride is always 1
  int64_t teacher_row_stride = 0;
  int64_t teacher_k_stride = 0;
  int64_t grad_row_stride = 0;

  const void* student = nullptr;  // ElemType student_type
  const void* teacher = nullptr;  // ElemType teacher_type
  const int64_t* labels = nullptr;  // optional [n_rows]
  const bool* mask = nullptr;       // optional [n_rows]
  // Optional per-row weight [n_rows] (float32, float64 for float64 students) and a global factor: both
  // multiply the row's loss and gradient.  They carry the reduction (1 / number of counted rows, or
  // 1 / normalizer) into the forward, so the backward of a mean is free when grad_output is 1.
  const void* row_weight = nullptr;
  double loss_scale = 1.0;
  void* loss_rows = nullptr;        // [n_rows], float32 (float64 when student_type == kFloat64)
  void* grad = nullptr;             // [n_rows, grad_row_stride], student_type; may be null when !compute_grad

  int32_t student_type = kFloat32;
  int32_t teacher_type = kFloat32;
  int32_t divergence = kKL;        // kJSD only with 0 < beta < 1 (the caller maps beta 0/1 to KL/reverse KL)
  int32_t teacher_format = kLogits;
  double temperature = 1.0;
  double beta = 0.5;
  double alpha = 0.0;
  int64_t ignore_index = -100;
  bool scale_t2 = true;  // multiply the soft term by T^2 (not for MSE)
  bool compute_grad = true;
};

}  // namespace mkd_fast
