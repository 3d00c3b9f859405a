// What the CPU and CUDA LSTM bindings share: the sorted-row order of a batch (from lengths or from a
// PackedSequence's batch_sizes), with the checks that name the offending argument.  Needs only torch's CPU
// headers, so the CUDA binding still compiles against a CPU-only torch.
#pragma once
#include <torch/extension.h>

#include <algorithm>
#include <numeric>
#include <vector>

namespace mkd_fast {
namespace lstm {

// Sorted-row view of a batch: perm[j] is the batch index of the j-th longest sequence.
struct Order {
  int64_t batch = 0, steps = 0, total = 0;  // B, T, N = sum of lengths
  std::vector<int64_t> perm, length;        // [B], sorted by length, longest first
  std::vector<int64_t> batch_sizes, offsets;  // [T]
};

// offsets[t] = sum of batch_sizes before t; total = their sum.
inline void fill_offsets(Order& o) {
  o.offsets.assign(o.steps, 0);
  int64_t n = 0;
  for (int64_t t = 0; t < o.steps; ++t) {
    o.offsets[t] = n;
    n += o.batch_sizes[t];
  }
  o.total = n;
}

// Rows sorted by length (stable, longest first), from lengths [B] in [1, steps].
inline Order order_from_lengths(const at::Tensor& lengths, int64_t steps) {
  TORCH_CHECK(lengths.dim() == 1, "lengths: expected a 1-D tensor, got ", lengths.dim(), " dimensions");
  TORCH_CHECK(lengths.device().is_cpu(), "lengths: expected a CPU tensor, got device ", lengths.device());
  TORCH_CHECK(!at::isFloatingType(lengths.scalar_type()) && lengths.scalar_type() != at::kBool,
              "lengths: expected an integer tensor, got ", lengths.scalar_type());
  const at::Tensor len = lengths.to(at::kLong).contiguous();
  Order o;
  o.batch = len.numel();
  o.steps = steps;
  const int64_t* l = len.data_ptr<int64_t>();
  for (int64_t b = 0; b < o.batch; ++b) {
    TORCH_CHECK(l[b] >= 1 && l[b] <= steps, "lengths: expected values in [1, ", steps, "], got ", l[b],
                " at index ", b);
  }
  o.perm.resize(o.batch);
  std::iota(o.perm.begin(), o.perm.end(), 0);
  std::stable_sort(o.perm.begin(), o.perm.end(), [&](int64_t a, int64_t b) { return l[a] > l[b]; });
  o.length.resize(o.batch);
  for (int64_t j = 0; j < o.batch; ++j) o.length[j] = l[o.perm[j]];
  // batch_sizes[t] = number of sequences longer than t (a suffix sum of the length histogram).
  o.batch_sizes.assign(steps + 1, 0);
  for (int64_t j = 0; j < o.batch; ++j) ++o.batch_sizes[o.length[j]];
  for (int64_t t = steps - 1; t >= 0; --t) o.batch_sizes[t] += o.batch_sizes[t + 1];
  o.batch_sizes.erase(o.batch_sizes.begin());
  fill_offsets(o);
  return o;
}

// The order a PackedSequence describes: its batch_sizes and sorted_indices (None: already sorted).
inline Order order_from_batch_sizes(const at::Tensor& batch_sizes, const c10::optional<at::Tensor>& sorted_indices) {
  TORCH_CHECK(batch_sizes.dim() == 1 && batch_sizes.device().is_cpu(),
              "batch_sizes: expected a 1-D CPU tensor (PackedSequence.batch_sizes)");
  const at::Tensor bs = batch_sizes.to(at::kLong).contiguous();
  Order o;
  o.steps = bs.numel();
  o.batch_sizes.assign(bs.data_ptr<int64_t>(), bs.data_ptr<int64_t>() + o.steps);
  o.batch = o.steps > 0 ? o.batch_sizes[0] : 0;
  for (int64_t t = 0; t < o.steps; ++t) {
    TORCH_CHECK(o.batch_sizes[t] >= 1 && (t == 0 || o.batch_sizes[t] <= o.batch_sizes[t - 1]),
                "batch_sizes: expected positive, non-increasing values (PackedSequence.batch_sizes)");
  }
  o.perm.resize(o.batch);
  if (sorted_indices.has_value() && sorted_indices->defined()) {
    const at::Tensor idx = sorted_indices->to(at::kCPU).to(at::kLong).contiguous();
    TORCH_CHECK(idx.numel() == o.batch, "sorted_indices: expected ", o.batch, " elements, got ", idx.numel());
    std::vector<char> seen(o.batch, 0);
    for (int64_t j = 0; j < o.batch; ++j) {
      const int64_t b = idx.data_ptr<int64_t>()[j];
      TORCH_CHECK(b >= 0 && b < o.batch && !seen[b], "sorted_indices: expected a permutation of 0..", o.batch - 1);
      seen[b] = 1;
      o.perm[j] = b;
    }
  } else {
    std::iota(o.perm.begin(), o.perm.end(), 0);
  }
  o.length.assign(o.batch, 0);
  for (int64_t t = 0; t < o.steps; ++t) {
    for (int64_t j = 0; j < o.batch_sizes[t]; ++j) ++o.length[j];
  }
  fill_offsets(o);
  return o;
}

}  // namespace lstm
}  // namespace mkd_fast
