// Torch binding of the CUDA kernels (module mkd_fast._C_cuda): checks tensors, allocates outputs,
// fills KdParams and launches on the stream handed over from Python (an int: torch's
// `torch.cuda.current_stream(device).cuda_stream`).
//
// Only <torch/extension.h> and kd_cuda.h are included: no ATen/cuda or c10/cuda header, so this file
// also compiles (syntax check in CI) against a CPU-only torch build.  at::empty(..., cuda options)
// allocates through the CUDA caching allocator at run time all the same.
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>

#include "../kd_binding_common.h"
#include "kd_cuda.h"

namespace {

using mkd_fast::KdParams;

void check_cuda_rows(const at::Tensor& t, const char* name, int64_t dims, const at::Device& device) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.device() == device, name, ": expected a tensor on ", device, ", got ", t.device());
  TORCH_CHECK(t.dim() == dims, name, ": expected ", dims, " dimensions, got ", t.dim());
  TORCH_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, name,
              ": the class dimension must be contiguous (stride(-1) == 1), got stride ", t.stride(-1));
}

// A per-row tensor (labels, mask, row weight) on the student's device, made contiguous.
at::Tensor rows_tensor(const at::Tensor& t, const char* name, int64_t n_rows, const at::Device& device) {
  TORCH_CHECK(t.is_cuda() && t.device() == device, name, ": expected a tensor on ", device, ", got ",
              t.device());
  TORCH_CHECK(t.numel() == n_rows, name, ": expected ", n_rows, " elements, got ", t.numel());
  return t.reshape({n_rows}).contiguous();
}

std::tuple<at::Tensor, at::Tensor> kd_rows(const at::Tensor& student, const at::Tensor& teacher,
                                           const std::optional<at::Tensor>& labels,
                                           const std::optional<at::Tensor>& mask, double temperature,
                                           int64_t divergence, double beta, int64_t teacher_format,
                                           double alpha, int64_t ignore_index, bool scale_t2,
                                           bool compute_grad, int64_t stream,
                                           const std::optional<at::Tensor>& row_weight,
                                           double loss_scale) {
  TORCH_CHECK(student.is_cuda(), "student_logits: expected a CUDA tensor, got device ", student.device());
  const at::Device device = student.device();
  check_cuda_rows(student, "student_logits", 2, device);
  check_cuda_rows(teacher, "teacher_logits", 3, device);
  const int64_t n_rows = student.size(0), n_classes = student.size(1);
  KdParams p = mkd_fast::make_params(student, teacher, temperature, divergence, beta, teacher_format, alpha,
                                     ignore_index, scale_t2, compute_grad, loss_scale, /*allow_double=*/false);

  at::Tensor labels_c, mask_c, weight_c;
  if (labels.has_value()) {
    TORCH_CHECK(labels->scalar_type() == at::kLong, "labels: expected int64, got ", labels->scalar_type());
    labels_c = rows_tensor(*labels, "labels", n_rows, device);
    p.labels = labels_c.data_ptr<int64_t>();
  }
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool, "mask: expected bool, got ", mask->scalar_type());
    mask_c = rows_tensor(*mask, "mask", n_rows, device);
    p.mask = mask_c.data_ptr<bool>();
  }
  if (row_weight.has_value()) {
    weight_c = rows_tensor(*row_weight, "row_weight", n_rows, device).to(at::kFloat).contiguous();
    p.row_weight = weight_c.data_ptr();
  }

  at::Tensor loss = at::empty({n_rows}, student.options().dtype(at::kFloat));
  at::Tensor grad = compute_grad ? at::empty({n_rows, n_classes}, student.options())
                                 : at::empty({0}, student.options());
  p.loss_rows = loss.data_ptr();
  if (compute_grad) {
    p.grad = grad.data_ptr();
    p.grad_row_stride = n_classes;
  }
  if (n_rows == 0) return {loss, grad};
  {
    pybind11::gil_scoped_release no_gil;
    // The temporaries above (contiguous copies) may be freed before the kernel has run: the caching
    // allocator only hands their memory to later work on the same (current) stream.
    kd_rows_cuda_launch(p, static_cast<int>(device.index()), reinterpret_cast<void*>(stream));
  }
  return {loss, grad};
}

at::Tensor scale_rows(const at::Tensor& grad, const at::Tensor& row_scale, std::optional<at::Tensor> out,
                      int64_t stream) {
  TORCH_CHECK(grad.is_cuda(), "grad: expected a CUDA tensor, got device ", grad.device());
  const at::Device device = grad.device();
  check_cuda_rows(grad, "grad", 2, device);
  const int64_t n_rows = grad.size(0), n_cols = grad.size(1);
  const int32_t type = mkd_fast::elem_type(grad, "grad", /*allow_double=*/false);
  at::Tensor scale = rows_tensor(row_scale, "row_scale", n_rows, device).to(at::kFloat).contiguous();

  at::Tensor result = out.has_value() ? *out : at::empty({n_rows, n_cols}, grad.options());
  check_cuda_rows(result, "out", 2, device);
  TORCH_CHECK(result.sizes() == grad.sizes() && result.scalar_type() == grad.scalar_type(),
              "out: expected the shape and dtype of grad");
  // The kernel takes one row stride for grad and out: when their layouts differ, work on contiguous
  // copies (out may alias grad only with the same layout, which takes the direct path).
  at::Tensor src = grad, dst = result;
  if (n_rows > 1 && grad.stride(0) != result.stride(0)) {
    src = grad.contiguous();
    dst = result.stride(0) == n_cols ? result : at::empty({n_rows, n_cols}, grad.options());
  }
  if (n_rows > 0 && n_cols > 0) {
    pybind11::gil_scoped_release no_gil;
    scale_rows_cuda_launch(src.data_ptr(), type, scale.data_ptr<float>(), dst.data_ptr(), n_rows, n_cols,
                           n_rows > 1 ? src.stride(0) : n_cols, static_cast<int>(device.index()),
                           reinterpret_cast<void*>(stream));
  }
  if (!dst.is_same(result)) result.copy_(dst);
  return result;
}

}  // namespace

namespace mkd_fast {
void register_lstm_cuda(pybind11::module_& m);  // lstm_cuda_binding.cpp
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mkd_fast CUDA kernels (fused distillation loss, LSTM inference)";
  mkd_fast::register_lstm_cuda(m);
  m.def("kd_rows", &kd_rows,
        "Per-row fused distillation loss [N] (float32) and, when compute_grad, its gradient w.r.t. the "
        "student [N, C] (student dtype; else an empty tensor), both times loss_scale * row_weight[r]",
        pybind11::arg("student"), pybind11::arg("teacher"), pybind11::arg("labels"), pybind11::arg("mask"),
        pybind11::arg("temperature"), pybind11::arg("divergence"), pybind11::arg("beta"),
        pybind11::arg("teacher_format"), pybind11::arg("alpha"), pybind11::arg("ignore_index"),
        pybind11::arg("scale_t2"), pybind11::arg("compute_grad"), pybind11::arg("stream"),
        pybind11::arg("row_weight") = pybind11::none(), pybind11::arg("loss_scale") = 1.0);
  m.def("scale_rows", &scale_rows, "out[r, c] = grad[r, c] * row_scale[r] (float32 math, grad's dtype)",
        pybind11::arg("grad"), pybind11::arg("row_scale"), pybind11::arg("out"), pybind11::arg("stream"));
}
