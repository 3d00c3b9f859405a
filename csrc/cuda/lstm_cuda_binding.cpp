// Torch binding of the CUDA LSTM (mkd_fast._C_cuda.lstm_forward): sorts rows by length on the host, gathers
// the input into packed order and runs each layer's input projection as one GEMM (ATen, i.e. cuBLAS), then
// the recurrence kernels of lstm_cuda_kernels.cu.  Only <torch/extension.h> and torch-free headers are
// included, so this file also compiles (syntax check in CI) against a CPU-only torch.
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "../kd_binding_common.h"
#include "../lstm_binding_common.h"
#include "lstm_cuda.h"

namespace {

using mkd_fast::cuda::LstmCudaLayer;

// The index tables in one pinned host buffer and one asynchronous copy (instead of a synchronous copy from
// pageable memory per table, which costs a host round trip each at batch 1).  The caching host allocator
// keeps the pinned buffer alive until the copy on the current stream has finished.  Returns the device
// tables in the order given.
std::vector<at::Tensor> to_device(const std::vector<const std::vector<int64_t>*>& tables, const at::Device& device) {
  int64_t total = 0;
  for (const auto* t : tables) total += static_cast<int64_t>(t->size());
  at::Tensor host = at::empty({total}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* dst = host.data_ptr<int64_t>();
  for (const auto* t : tables) dst = std::copy(t->begin(), t->end(), dst);
  const at::Tensor dev = host.to(device, /*non_blocking=*/true);
  std::vector<at::Tensor> views;
  int64_t start = 0;
  for (const auto* t : tables) {
    const int64_t n = static_cast<int64_t>(t->size());
    views.push_back(dev.narrow(0, start, n));
    start += n;
  }
  return views;
}

void check_weights(const std::vector<at::Tensor>& w_ih, const std::vector<at::Tensor>& bias,
                   const std::vector<at::Tensor>& w_hh, int64_t H, int64_t D, int64_t E, const at::Device& device) {
  const int64_t L = static_cast<int64_t>(w_ih.size());
  TORCH_CHECK(L >= 1 && static_cast<int64_t>(bias.size()) == L && static_cast<int64_t>(w_hh.size()) == L,
              "weights: expected one w_ih, bias and w_hh per layer");
  for (int64_t l = 0; l < L; ++l) {
    const int64_t in = l == 0 ? E : D * H;
    TORCH_CHECK(w_ih[l].device() == device && w_ih[l].scalar_type() == at::kFloat && w_ih[l].is_contiguous() &&
                    w_ih[l].dim() == 2 && w_ih[l].size(0) == D * 4 * H && w_ih[l].size(1) == in,
                "w_ih[", l, "]: expected a contiguous float32 tensor [", D * 4 * H, ", ", in, "] on ", device);
    TORCH_CHECK(bias[l].device() == device && bias[l].scalar_type() == at::kFloat && bias[l].numel() == D * 4 * H,
                "bias[", l, "]: expected a float32 tensor of ", D * 4 * H, " elements on ", device);
    TORCH_CHECK(w_hh[l].device() == device && w_hh[l].scalar_type() == at::kFloat && w_hh[l].is_contiguous() &&
                    w_hh[l].numel() == D * H * H * 4,
                "w_hh[", l, "]: expected a contiguous float32 tensor of ", D * H * H * 4, " elements on ", device);
  }
}

// Arguments as mkd_fast._C.lstm_forward (weights in mkd_fast.fast_lstm.pack_lstm_cuda's layout), plus
// the stream (torch.cuda.current_stream(device).cuda_stream) and `path` (0 auto, 1 persistent, 2 per-step).
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_forward(
    const at::Tensor& input, const at::Tensor& lengths, const std::optional<at::Tensor>& sorted_indices, bool packed,
    bool batch_first, const std::vector<at::Tensor>& w_ih, const std::vector<at::Tensor>& bias,
    const std::vector<at::Tensor>& w_hh, int64_t hidden, int64_t directions,
    std::optional<at::ScalarType> out_dtype, int64_t stream, int64_t path) {
  TORCH_CHECK(input.is_cuda(), "input: expected a CUDA tensor, got device ", input.device());
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16 ||
                  input.scalar_type() == at::kHalf,
              "input: expected float32, bfloat16 or float16, got ", input.scalar_type());
  TORCH_CHECK(directions == 1 || directions == 2, "directions: expected 1 or 2, got ", directions);
  TORCH_CHECK(hidden >= 1 && hidden < (int64_t(1) << 20), "hidden: expected a value in [1, 2^20), got ", hidden);
  TORCH_CHECK(input.dim() == (packed ? 2 : 3), "input: expected ", packed ? 2 : 3, " dimensions, got ", input.dim());
  const at::Device device = input.device();
  const int64_t H = hidden, D = directions, DH = D * H, E = input.size(-1);
  const int64_t L = static_cast<int64_t>(w_ih.size());
  check_weights(w_ih, bias, w_hh, H, D, E, device);

  mkd_fast::lstm::Order o = packed ? mkd_fast::lstm::order_from_batch_sizes(lengths, sorted_indices)
                                   : mkd_fast::lstm::order_from_lengths(lengths, input.size(batch_first ? 1 : 0));
  if (!packed) {
    TORCH_CHECK(o.batch == input.size(batch_first ? 0 : 1), "lengths: expected ", input.size(batch_first ? 0 : 1),
                " elements (the batch size of input), got ", o.batch);
  } else {
    TORCH_CHECK(input.size(0) == o.total, "input: expected ", o.total, " packed rows (sum of batch_sizes), got ",
                input.size(0));
  }
  const at::ScalarType odt = out_dtype.has_value() ? *out_dtype : input.scalar_type();
  const auto oopts = input.options().dtype(odt);
  at::Tensor h_n = at::empty({L * D, o.batch, H}, oopts), c_n = at::empty({L * D, o.batch, H}, oopts);
  at::Tensor out = packed ? at::empty({o.total, DH}, oopts)
                          : at::zeros(batch_first ? std::vector<int64_t>{o.batch, o.steps, DH}
                                                  : std::vector<int64_t>{o.steps, o.batch, DH},
                                      oopts);  // padded positions stay zero
  if (o.batch == 0 || o.total == 0) return {out, h_n, c_n};
  const int32_t odt_code = mkd_fast::elem_type(out, "out_dtype", /*allow_double=*/false);

  // Host-side index tables (element offsets), then one copy each to the device.
  std::vector<int64_t> gather(o.total), out_t(o.steps), out_row(o.batch), y_t(o.steps), y_row(o.batch),
      state_row(o.batch);
  const int64_t ost = packed ? 0 : out.stride(batch_first ? 1 : 0), osb = packed ? 0 : out.stride(batch_first ? 0 : 1);
  for (int64_t t = 0; t < o.steps; ++t) {
    for (int64_t j = 0; j < o.batch_sizes[t]; ++j) {
      // Row of the input viewed as [rows, E]: padded (t, batch perm[j]) or packed row offsets[t] + j.
      gather[o.offsets[t] + j] = packed ? o.offsets[t] + j
                                        : (batch_first ? o.perm[j] * o.steps + t : t * o.batch + o.perm[j]);
    }
    out_t[t] = packed ? o.offsets[t] * DH : t * ost;
    y_t[t] = o.offsets[t] * DH;
  }
  for (int64_t j = 0; j < o.batch; ++j) {
    out_row[j] = packed ? j * DH : o.perm[j] * osb;
    y_row[j] = j * DH;
    state_row[j] = o.perm[j] * H;
  }
  const std::vector<at::Tensor> d = to_device(
      {&o.length, &o.batch_sizes, &o.offsets, &out_t, &out_row, &y_t, &y_row, &state_row, &gather}, device);
  const at::Tensor &d_len = d[0], &d_bs = d[1], &d_off = d[2], &d_out_t = d[3], &d_out_row = d[4], &d_y_t = d[5],
                   &d_y_row = d[6], &d_state_row = d[7], &d_gather = d[8];

  const auto fopts = input.options().dtype(at::kFloat);
  at::Tensor x = input.reshape({-1, E}).index_select(0, d_gather).to(at::kFloat);
  at::Tensor ybuf = L > 1 ? at::empty({o.total, DH}, fopts) : at::Tensor();
  at::Tensor work = at::empty({3 * D * o.batch * H}, fopts);
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor gates = at::addmm(bias[l], l == 0 ? x : ybuf, w_ih[l].t());  // [N, D * H * 4]
    const bool last = l == L - 1;
    LstmCudaLayer a;
    a.hidden = static_cast<int32_t>(H);
    a.directions = static_cast<int32_t>(D);
    a.steps = o.steps;
    a.rows = o.batch;
    a.gates_x = gates.data_ptr<float>();
    a.w_hh = w_hh[l].data_ptr<float>();
    a.lengths = d_len.data_ptr<int64_t>();
    a.batch_sizes = d_bs.data_ptr<int64_t>();
    a.offsets = d_off.data_ptr<int64_t>();
    a.out = last ? out.data_ptr() : ybuf.data_ptr();
    a.out_type = last ? odt_code : mkd_fast::kFloat32;
    a.out_t = last ? d_out_t.data_ptr<int64_t>() : d_y_t.data_ptr<int64_t>();
    a.out_row = last ? d_out_row.data_ptr<int64_t>() : d_y_row.data_ptr<int64_t>();
    a.h_n = static_cast<char*>(h_n.data_ptr()) + l * D * o.batch * H * h_n.element_size();
    a.c_n = static_cast<char*>(c_n.data_ptr()) + l * D * o.batch * H * c_n.element_size();
    a.state_type = odt_code;
    a.state_dir_stride = o.batch * H;
    a.state_row = d_state_row.data_ptr<int64_t>();
    a.workspace = work.data_ptr<float>();
    pybind11::gil_scoped_release no_gil;
    // Temporaries (gates, index tables) are freed by the caching allocator only for later work on this
    // same stream, so they outlive the kernels.
    mkd_fast::cuda::lstm_layer_cuda_launch(a, static_cast<int>(device.index()), reinterpret_cast<void*>(stream),
                                           static_cast<int32_t>(path));
  }
  return {out, h_n, c_n};
}

}  // namespace

namespace mkd_fast {

void register_lstm_cuda(pybind11::module_& m) {
  m.def("lstm_forward", &lstm_forward,
        "Multi-layer (bi)LSTM inference on CUDA tensors, padded or packed; returns (output, h_n, c_n)",
        pybind11::arg("input"), pybind11::arg("lengths"), pybind11::arg("sorted_indices"), pybind11::arg("packed"),
        pybind11::arg("batch_first"), pybind11::arg("w_ih"), pybind11::arg("bias"), pybind11::arg("w_hh"),
        pybind11::arg("hidden"), pybind11::arg("directions"), pybind11::arg("out_dtype"), pybind11::arg("stream"),
        pybind11::arg("path") = 0);
}

}  // namespace mkd_fast
