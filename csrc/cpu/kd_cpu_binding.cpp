// Torch binding of the CPU kernel: checks tensors, allocates outputs, fills KdParams, releases the GIL.
#include <torch/extension.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "../kd_binding_common.h"
#include "../kd_params.h"
#include "kd_cpu_kernel.h"

namespace {

using mkd_fast::KdParams;

// Recycles the large gradient buffers this extension returns.  On Linux every fresh allocation above
// 32 MiB is a new mmap whose pages fault in on first write; measured here, that first touch costs several
// times the kernel's own writing (17 ms for 65 MB vs 2.5 ms for a second write).  A training loop frees
// the gradient before the next forward, so keeping the last two buffers removes that cost.
// MKD_FAST_CPU_BUFFER_CACHE=0 disables it; release_buffers() empties it.
class BufferPool {
 public:
  static constexpr size_t kMinBytes = size_t(8) << 20;
  static constexpr size_t kMaxBlocks = 2;

  void* get(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (size_t i = 0; i < blocks_.size(); ++i) {
        if (blocks_[i].first == bytes) {
          void* p = blocks_[i].second;
          blocks_.erase(blocks_.begin() + static_cast<std::ptrdiff_t>(i));
          return p;
        }
      }
    }
    void* p = std::aligned_alloc(64, bytes);
    TORCH_CHECK(p != nullptr, "mkd_fast: out of memory allocating ", bytes, " bytes for the gradient");
    return p;
  }

  void put(void* p, size_t bytes) {
    if (enabled()) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (blocks_.size() >= kMaxBlocks) {
        std::free(blocks_.front().second);
        blocks_.erase(blocks_.begin());
      }
      blocks_.emplace_back(bytes, p);
      return;
    }
    std::free(p);
  }

  int64_t release() {
    std::lock_guard<std::mutex> lock(mutex_);
    int64_t freed = 0;
    for (auto& b : blocks_) {
      freed += static_cast<int64_t>(b.first);
      std::free(b.second);
    }
    blocks_.clear();
    return freed;
  }

  static bool enabled() {
    static const bool on = [] {
      const char* v = std::getenv("MKD_FAST_CPU_BUFFER_CACHE");
      return v == nullptr || std::string(v) != "0";
    }();
    return on;
  }

 private:
  std::mutex mutex_;
  std::vector<std::pair<size_t, void*>> blocks_;
};

BufferPool& pool() {
  static BufferPool* instance = new BufferPool();  // never destroyed: tensors may outlive static teardown
  return *instance;
}

at::Tensor empty_rows(int64_t n_rows, int64_t n_cols, const at::TensorOptions& options) {
  const size_t bytes = static_cast<size_t>(n_rows) * static_cast<size_t>(n_cols) * options.dtype().itemsize();
  if (bytes < BufferPool::kMinBytes || !BufferPool::enabled()) return at::empty({n_rows, n_cols}, options);
  const size_t rounded = (bytes + 4095) / 4096 * 4096;  // aligned_alloc wants a multiple of the alignment
  void* p = pool().get(rounded);
  return at::from_blob(p, {n_rows, n_cols}, [rounded](void* q) { pool().put(q, rounded); }, options);
}

void check_cpu_rows(const at::Tensor& t, const char* name, int64_t dims) {
  TORCH_CHECK(t.device().is_cpu(), name, ": expected a CPU tensor, got device ", t.device());
  TORCH_CHECK(t.dim() == dims, name, ": expected ", dims, " dimensions, got ", t.dim());
  TORCH_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, name, ": the class dimension must be contiguous");
}

std::tuple<at::Tensor, at::Tensor> kd_rows(const at::Tensor& student, const at::Tensor& teacher,
                                           const c10::optional<at::Tensor>& labels,
                                           const c10::optional<at::Tensor>& mask, double temperature,
                                           int64_t divergence, double beta, int64_t teacher_format, double alpha,
                                           int64_t ignore_index, bool scale_t2, bool compute_grad,
                                           const c10::optional<at::Tensor>& row_weight, double loss_scale,
                                           const c10::optional<at::Tensor>& grad_out) {
  check_cpu_rows(student, "student_logits", 2);
  check_cpu_rows(teacher, "teacher_logits", 3);
  const int64_t n_rows = student.size(0), n_classes = student.size(1);
  KdParams p = mkd_fast::make_params(student, teacher, temperature, divergence, beta, teacher_format, alpha,
                                     ignore_index, scale_t2, compute_grad, loss_scale, /*allow_double=*/true);

  at::Tensor labels_c, mask_c;
  if (labels.has_value()) {
    labels_c = labels->contiguous();
    TORCH_CHECK(labels_c.scalar_type() == at::kLong && labels_c.numel() == n_rows && labels_c.device().is_cpu(),
                "labels: expected an int64 CPU tensor with ", n_rows, " elements");
    p.labels = labels_c.data_ptr<int64_t>();
  }
  if (mask.has_value()) {
    mask_c = mask->contiguous();
    TORCH_CHECK(mask_c.scalar_type() == at::kBool && mask_c.numel() == n_rows && mask_c.device().is_cpu(),
                "mask: expected a bool CPU tensor with ", n_rows, " elements");
    p.mask = mask_c.data_ptr<bool>();
  }

  const auto loss_dtype = student.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor weight_c;
  if (row_weight.has_value()) {
    TORCH_CHECK(row_weight->numel() == n_rows && row_weight->device().is_cpu(),
                "row_weight: expected a CPU tensor with ", n_rows, " elements");
    weight_c = row_weight->to(loss_dtype).contiguous();
    p.row_weight = weight_c.data_ptr();
  }
  at::Tensor loss = at::empty({n_rows}, student.options().dtype(loss_dtype));
  at::Tensor grad;
  if (!compute_grad) {
    grad = at::empty({0}, student.options());
  } else if (grad_out.has_value()) {  // e.g. the student logits themselves (kd_loss(grad_inplace=True))
    grad = *grad_out;
    check_cpu_rows(grad, "grad_out", 2);
    TORCH_CHECK(grad.sizes() == student.sizes() && grad.scalar_type() == student.scalar_type(),
                "grad_out: expected the shape and dtype of student_logits");
  } else {
    grad = empty_rows(n_rows, n_classes, student.options());
  }
  p.loss_rows = loss.data_ptr();
  if (compute_grad) {
    p.grad = grad.data_ptr();
    p.grad_row_stride = n_rows > 1 ? grad.stride(0) : n_classes;
  }
  {
    pybind11::gil_scoped_release no_gil;
    mkd_fast::cpu::kd_rows_cpu(p);
  }
  return {loss, grad};
}

at::Tensor scale_rows(const at::Tensor& grad, const at::Tensor& row_scale, c10::optional<at::Tensor> out) {
  check_cpu_rows(grad, "grad", 2);
  const auto scale_dtype = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor scale = row_scale.to(scale_dtype).contiguous();
  TORCH_CHECK(scale.numel() == grad.size(0), "row_scale: expected ", grad.size(0), " elements, got ", scale.numel());
  at::Tensor result = out.has_value() ? *out : empty_rows(grad.size(0), grad.size(1), grad.options());
  check_cpu_rows(result, "out", 2);
  TORCH_CHECK(result.sizes() == grad.sizes() && result.scalar_type() == grad.scalar_type(),
              "out: expected the shape and dtype of grad");
  const int32_t type = mkd_fast::elem_type(grad, "grad", /*allow_double=*/true);
  {
    pybind11::gil_scoped_release no_gil;
    mkd_fast::cpu::scale_rows_cpu(grad.data_ptr(), type, scale.data_ptr(), result.data_ptr(), grad.size(0),
                                  grad.size(1), grad.stride(0), result.stride(0));
  }
  return result;
}

}  // namespace

namespace mkd_fast {
void register_lstm_cpu(pybind11::module_& m);  // lstm_cpu_binding.cpp
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mkd_fast CPU kernels (fused distillation loss, LSTM inference)";
  mkd_fast::register_lstm_cpu(m);
  m.def("kd_rows", &kd_rows, "Per-row fused distillation loss and student gradient", pybind11::arg("student"),
        pybind11::arg("teacher"), pybind11::arg("labels"), pybind11::arg("mask"), pybind11::arg("temperature"),
        pybind11::arg("divergence"), pybind11::arg("beta"), pybind11::arg("teacher_format"), pybind11::arg("alpha"),
        pybind11::arg("ignore_index"), pybind11::arg("scale_t2"), pybind11::arg("compute_grad"),
        pybind11::arg("row_weight") = pybind11::none(), pybind11::arg("loss_scale") = 1.0,
        pybind11::arg("grad_out") = pybind11::none());
  m.def("scale_rows", &scale_rows, "out[r, c] = grad[r, c] * row_scale[r]", pybind11::arg("grad"),
        pybind11::arg("row_scale"), pybind11::arg("out") = pybind11::none());
  m.def("release_buffers", []() { return pool().release(); }, "Free the cached gradient buffers; returns bytes");
  m.def("compiled_capability", []() { return std::string(mkd_fast::cpu::compiled_capability()); });
}
