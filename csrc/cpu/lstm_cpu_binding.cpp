// Torch binding of the CPU LSTM (mkd_fast._C.lstm_forward): checks the arguments, sorts the rows by length,
// and runs each layer with lstm_layer_cpu (lstm_cpu_kernel.cpp), handing it the input projection as
// at::addmm on the task's rows.  Intermediate layers exchange a packed float32 buffer; the last layer writes
// the padded or packed output and the final states directly.
#include <torch/extension.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../kd_binding_common.h"
#include "../lstm_binding_common.h"
#include "lstm_cpu_kernel.h"

namespace {

using mkd_fast::cpu::LstmLayerArgs;
using mkd_fast::lstm::Order;

void check_weights(const std::vector<at::Tensor>& w_ih, const std::vector<at::Tensor>& bias,
                   const std::vector<at::Tensor>& w_hh, int64_t H, int64_t D, int64_t E) {
  // E < 0: token input, the first layer's w_ih is not used (the table replaces its projection).
  const int64_t L = static_cast<int64_t>(w_ih.size());
  TORCH_CHECK(L >= 1 && static_cast<int64_t>(bias.size()) == L && static_cast<int64_t>(w_hh.size()) == L,
              "weights: expected one w_ih, bias and w_hh per layer");
  const int64_t V = mkd_fast::cpu::lstm_block_width(), Hp = (H + V - 1) / V * V, G = D * 4 * H;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t in = l == 0 ? E : D * H;
    if (in >= 0) {
      TORCH_CHECK(w_ih[l].scalar_type() == at::kFloat && w_ih[l].is_contiguous() && w_ih[l].device().is_cpu() &&
                      w_ih[l].dim() == 2 && w_ih[l].size(0) == G && w_ih[l].size(1) == in,
                  "w_ih[", l, "]: expected a contiguous float32 CPU tensor [", G, ", ", in, "], got ",
                  w_ih[l].sizes());
    }
    TORCH_CHECK(bias[l].scalar_type() == at::kFloat && bias[l].is_contiguous() && bias[l].numel() == G &&
                    bias[l].device().is_cpu(),
                "bias[", l, "]: expected a contiguous float32 CPU tensor of ", G, " elements");
    TORCH_CHECK(w_hh[l].scalar_type() == at::kFloat && w_hh[l].is_contiguous() && w_hh[l].device().is_cpu() &&
                    w_hh[l].numel() == D * Hp * H * 4,
                "w_hh[", l, "]: expected a contiguous float32 CPU tensor of ", D * Hp * H * 4,
                " elements (pack_lstm_cpu layout)");
  }
}

// Runs a (multi-layer, uni- or bidirectional) LSTM.  Arguments: see mkd_fast/fast_lstm.py (FastBiLSTM._run).
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_forward(
    const at::Tensor& input, const at::Tensor& lengths, const c10::optional<at::Tensor>& sorted_indices,
    bool packed, bool batch_first, const std::vector<at::Tensor>& w_ih, const std::vector<at::Tensor>& bias,
    const std::vector<at::Tensor>& w_hh, int64_t hidden, int64_t directions,
    const c10::optional<at::Tensor>& table, c10::optional<at::ScalarType> out_dtype, int64_t tile_rows,
    int64_t chunk_steps) {
  TORCH_CHECK(input.device().is_cpu(), "input: expected a CPU tensor, got device ", input.device());
  TORCH_CHECK(directions == 1 || directions == 2, "directions: expected 1 or 2, got ", directions);
  TORCH_CHECK(hidden >= 1, "hidden: expected >= 1, got ", hidden);
  const bool tokens = table.has_value() && table->defined();
  const int64_t H = hidden, D = directions, G = D * 4 * H, DH = D * H;
  const int64_t L = static_cast<int64_t>(w_ih.size());

  at::Tensor x = input;
  const int64_t in_dims = (packed ? 1 : 2) + (tokens ? 0 : 1);
  TORCH_CHECK(x.dim() == in_dims, "input: expected ", in_dims, " dimensions, got ", x.dim());
  if (tokens) {
    TORCH_CHECK(x.scalar_type() == at::kLong, "input: expected int64 token ids, got ", x.scalar_type());
    TORCH_CHECK(table->scalar_type() == at::kFloat && table->is_contiguous() && table->dim() == 2 &&
                    table->size(1) == G && table->device().is_cpu(),
                "table: expected a contiguous float32 CPU tensor [vocab, ", G, "]");
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
                "input: expected float32, bfloat16 or float16, got ", x.scalar_type());
    if (x.size(-1) > 1 && x.stride(-1) != 1) x = x.contiguous();
  }
  const int64_t E = tokens ? -1 : x.size(-1);
  check_weights(w_ih, bias, w_hh, H, D, E);

  int64_t st = 0, sb = 0;
  Order o;
  if (packed) {
    o = mkd_fast::lstm::order_from_batch_sizes(lengths, sorted_indices);
    TORCH_CHECK(x.size(0) == o.total, "input: expected ", o.total, " packed rows (sum of batch_sizes), got ",
                x.size(0));
  } else {
    o = mkd_fast::lstm::order_from_lengths(lengths, x.size(batch_first ? 1 : 0));
    TORCH_CHECK(o.batch == x.size(batch_first ? 0 : 1), "lengths: expected ", x.size(batch_first ? 0 : 1),
                " elements (the batch size of input), got ", o.batch);
    st = x.stride(batch_first ? 1 : 0);
    sb = x.stride(batch_first ? 0 : 1);
  }
  if (tokens) {  // only real tokens are checked: padded positions may hold anything
    const int64_t vocab = table->size(0);
    const int64_t* id = x.const_data_ptr<int64_t>();
    for (int64_t j = 0; j < o.batch; ++j) {
      for (int64_t t = 0; t < o.length[j]; ++t) {
        const int64_t v = id[packed ? (o.offsets[t] + j) * x.stride(0) : t * st + o.perm[j] * sb];
        TORCH_CHECK(v >= 0 && v < vocab, "input: token id ", v, " out of range [0, ", vocab, ")");
      }
    }
  }

  const at::ScalarType odt = out_dtype.has_value() ? *out_dtype : (tokens ? at::kFloat : x.scalar_type());
  const auto oopts = x.options().dtype(odt);
  at::Tensor h_n = at::empty({L * D, o.batch, H}, oopts), c_n = at::empty({L * D, o.batch, H}, oopts);
  at::Tensor out = packed ? at::empty({o.total, DH}, oopts)
                          : (batch_first ? at::empty({o.batch, o.steps, DH}, oopts)
                                         : at::empty({o.steps, o.batch, DH}, oopts));
  if (o.batch == 0) return {out, h_n, c_n};
  const int32_t odt_code = mkd_fast::elem_type(out, "out_dtype", /*allow_double=*/false);
  const int64_t ost = packed ? 0 : out.stride(batch_first ? 1 : 0), osb = packed ? 0 : out.stride(batch_first ? 0 : 1);

  // Element offsets of (t, sorted row j): input, final output, packed intermediate buffers, states.
  std::vector<int64_t> in_t(o.steps), in_row(o.batch), out_t(o.steps), out_row(o.batch), y_t(o.steps),
      y_row(o.batch), state_row(o.batch);
  for (int64_t t = 0; t < o.steps; ++t) {
    in_t[t] = packed ? o.offsets[t] * x.stride(0) : t * st;
    out_t[t] = packed ? o.offsets[t] * DH : t * ost;
    y_t[t] = o.offsets[t] * DH;
  }
  for (int64_t j = 0; j < o.batch; ++j) {
    in_row[j] = packed ? j * x.stride(0) : o.perm[j] * sb;
    out_row[j] = packed ? j * DH : o.perm[j] * osb;
    y_row[j] = j * DH;
    state_row[j] = o.perm[j] * H;
  }
  // Intermediate layers: packed float32 [N, D * H], two buffers so a layer never overwrites its own input.
  const auto fopts = x.options().dtype(at::kFloat);
  at::Tensor ybuf[2];
  for (int64_t i = 0; i < std::min<int64_t>(2, L - 1); ++i) ybuf[i] = at::empty({o.total, DH}, fopts);

  pybind11::gil_scoped_release no_gil;
  for (int64_t l = 0; l < L; ++l) {
    const bool first = l == 0, last = l == L - 1;
    const at::Tensor& prev = first ? x : ybuf[(l - 1) % 2];
    const int64_t in_features = first ? E : DH;
    const at::Tensor& w = w_ih[l];
    const at::Tensor& b = bias[l];
    LstmLayerArgs a;
    a.hidden = H;
    a.directions = D;
    a.steps = o.steps;
    a.rows = o.batch;
    a.batch_sizes = o.batch_sizes.data();
    a.lengths = o.length.data();
    a.w_hh = w_hh[l].data_ptr<float>();
    a.in = prev.data_ptr();
    a.in_type = first && !tokens ? mkd_fast::elem_type(x, "input", /*allow_double=*/false) : mkd_fast::kFloat32;
    a.in_features = first && tokens ? 0 : in_features;
    a.in_t = first ? in_t.data() : y_t.data();
    a.in_row = first ? in_row.data() : y_row.data();
    if (first && tokens) {
      a.table = table->data_ptr<float>();
    } else {
      a.project = [&w, &b, in_features, H, fopts](int64_t d, const float* xs, int64_t n, float* gx) {
        const at::Tensor xt = at::from_blob(const_cast<float*>(xs), {n, in_features}, fopts);
        at::Tensor gt = at::from_blob(gx, {n, 4 * H}, fopts);
        at::addmm_out(gt, b.narrow(0, d * 4 * H, 4 * H), xt, w.narrow(0, d * 4 * H, 4 * H).t());
      };
    }
    a.out = last ? out.data_ptr() : ybuf[l % 2].data_ptr();
    a.out_type = last ? odt_code : mkd_fast::kFloat32;
    a.out_t = last ? out_t.data() : y_t.data();
    a.out_row = last ? out_row.data() : y_row.data();
    a.zero_tail = last && !packed;
    a.h_n = static_cast<char*>(h_n.data_ptr()) + l * D * o.batch * H * h_n.element_size();
    a.c_n = static_cast<char*>(c_n.data_ptr()) + l * D * o.batch * H * c_n.element_size();
    a.state_type = odt_code;
    a.state_dir_stride = o.batch * H;
    a.state_row = state_row.data();
    a.tile_rows = tile_rows;
    a.chunk_steps = chunk_steps;
    mkd_fast::cpu::lstm_layer_cpu(a);
  }
  return {out, h_n, c_n};
}

}  // namespace

namespace mkd_fast {

void register_lstm_cpu(pybind11::module_& m) {
  m.def("lstm_forward", &lstm_forward,
        "Multi-layer (bi)LSTM inference on padded or packed input; returns (output, h_n, c_n)",
        pybind11::arg("input"), pybind11::arg("lengths"), pybind11::arg("sorted_indices"), pybind11::arg("packed"),
        pybind11::arg("batch_first"), pybind11::arg("w_ih"), pybind11::arg("bias"), pybind11::arg("w_hh"),
        pybind11::arg("hidden"), pybind11::arg("directions"), pybind11::arg("table") = pybind11::none(),
        pybind11::arg("out_dtype") = pybind11::none(), pybind11::arg("tile_rows") = 0,
        pybind11::arg("chunk_steps") = 0);
  m.def("lstm_block_width", &mkd_fast::cpu::lstm_block_width,
        "V: hidden units per block of the packed LSTM weight layout (floats per vector)");
}

}  // namespace mkd_fast
