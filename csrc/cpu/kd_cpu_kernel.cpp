// CPU kernel of the fused distillation loss (forward value and student gradient in one call).
//
// Per row: the student and teacher rows are converted once into a per-thread float workspace (so the
// rest of the work reads cache, not DRAM), then a few vectorised passes compute the softmax statistics,
// the loss and the gradient.  DRAM traffic is one read of each input row and one write of the gradient
// row; exponentials: one per student element and one per teacher element (+1 when a hard-label term at
// T != 1 is asked for).  Rows run in parallel (at::parallel_for); with fewer rows than threads, the
// passes of each row are split over the class axis instead.
//
// Vectorisation uses ATen's Vectorized<T> with the capability chosen at build time (setup.py passes
// CPU_CAPABILITY_AVX2/AVX512 when the build machine has it); exp/log come from Sleef via ATen.
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "../kd_params.h"
#include "kd_cpu_kernel.h"

namespace mkd_fast {
namespace cpu {
namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;

constexpr int64_t kClassGrain = 16384;  // elements per task when one row is split across threads

// Calls f(i, count) for consecutive lane groups of [b, e): full vectors, then one partial tail.
template <typename T, typename F>
inline void for_lanes(int64_t b, int64_t e, const F& f) {
  constexpr int64_t W = Vec<T>::size();
  int64_t i = b;
  for (; i + W <= e; i += W) f(i, W);
  if (i < e) f(i, e - i);
}

template <typename T>
inline Vec<T> load(const T* p, int64_t i, int64_t count) {
  return count == Vec<T>::size() ? Vec<T>::loadu(p + i) : Vec<T>::loadu(p + i, count);
}

template <typename T>
inline void store(T* p, int64_t i, int64_t count, const Vec<T>& v) {
  if (count == Vec<T>::size()) {
    v.store(p + i);
  } else {
    v.store(p + i, count);
  }
}

// Store that bypasses the cache for full, 64-byte aligned float vectors (the gradient is written once and
// read much later: streaming saves the read-for-ownership of every line).  Falls back to a plain store.
template <typename T>
inline void store_streaming(T* p, int64_t i, int64_t count, const Vec<T>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same<T, float>::value) {
    if (count == Vec<T>::size() && (reinterpret_cast<uintptr_t>(p + i) & 63) == 0) {
      _mm512_stream_ps(p + i, v);
      return;
    }
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same<T, float>::value) {
    if (count == Vec<T>::size() && (reinterpret_cast<uintptr_t>(p + i) & 31) == 0) {
      _mm256_stream_ps(p + i, v);
      return;
    }
  }
#endif
  store(p, i, count, v);
}


// Lanes past `count` (the padded tail) replaced by `fill`, so they cannot disturb a reduction.
template <typename T>
inline Vec<T> keep(const Vec<T>& v, T fill, int64_t count) {
  return count == Vec<T>::size() ? v : Vec<T>::set(Vec<T>(fill), v, count);
}

// exp where the caller guarantees no NaN input (a row's non-finite max is handled before).
template <typename T>
inline Vec<T> exp_finite(const Vec<T>& x) {
  if constexpr (std::is_same<T, float>::value) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

// exp for the hot loops.  float: ATen's polynomial exp_u20 (about 1e-6 relative error; switching to it from
// Sleef's u10 took the 512 x 32000 forward from 33 to 21 ms here), with NaN put back because its range
// clamp would turn NaN into a finite number.  double (tests, gradcheck): the accurate Sleef exp.
template <typename T>
inline Vec<T> fast_exp(const Vec<T>& x) {
  if constexpr (std::is_same<T, float>::value) {
    return Vec<T>::blendv(exp_finite(x), x, x != x);
  } else {
    return x.exp();  // Sleef's exp keeps NaN
  }
}

template <typename T>
inline T lanes_sum(const Vec<T>& v) {
  alignas(64) T buf[Vec<T>::size()];
  v.store(buf);
  T s = 0;
  for (int64_t i = 0; i < Vec<T>::size(); ++i) s += buf[i];
  return s;
}

// max that keeps a NaN (std::max drops it), so a NaN logit reaches the row-level check.
template <typename T>
inline T nan_max(T a, T b) {
  return (std::isnan(b) || b > a) ? b : a;
}

template <typename T>
inline T lanes_max(const Vec<T>& v) {
  alignas(64) T buf[Vec<T>::size()];
  v.store(buf);
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < Vec<T>::size(); ++i) m = nan_max(m, buf[i]);
  return m;
}

// Runs a pass over [0, n) either inline or split across threads (few rows, many classes).
struct Exec {
  bool split;

  template <typename T, typename F>
  T sum(int64_t n, const F& f) const {
    if (!split || n <= kClassGrain) return f(0, n);
    return at::parallel_reduce(0, n, kClassGrain, T(0), [&](int64_t b, int64_t e, T) { return f(b, e); },
                               std::plus<T>());
  }
  template <typename T, typename F>
  T max(int64_t n, const F& f) const {
    if (!split || n <= kClassGrain) return f(0, n);
    return at::parallel_reduce(0, n, kClassGrain, -std::numeric_limits<T>::infinity(),
                               [&](int64_t b, int64_t e, T) { return f(b, e); },
                               [](T a, T b) { return nan_max(a, b); });
  }
  template <typename F>
  void each(int64_t n, const F& f) const {
    if (!split || n <= kClassGrain) {
      f(0, n);
    } else {
      at::parallel_for(0, n, kClassGrain, f);
    }
  }
};

template <typename E>
constexpr bool is_reduced_float = std::is_same<E, c10::BFloat16>::value || std::is_same<E, c10::Half>::value;

// dst[b:e] = src[b:e] converted to the compute type.  bf16 -> float is a 16-bit shift, written so the
// compiler vectorises it; the other conversions are c10's scalar ones.
template <typename T, typename E>
inline void convert_row(const E* src, T* dst, int64_t b, int64_t e) {
  if constexpr (std::is_same<E, c10::BFloat16>::value && std::is_same<T, float>::value) {
    const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
    uint32_t* out = reinterpret_cast<uint32_t*>(dst);
    for (int64_t i = b; i < e; ++i) out[i] = static_cast<uint32_t>(bits[i]) << 16;
  } else {
    for (int64_t i = b; i < e; ++i) dst[i] = static_cast<T>(src[i]);
  }
}

// dst[b:e] = src[b:e] rounded to the output type (vectorised float -> bf16/fp16).
template <typename T, typename E>
inline void store_row(const T* src, E* dst, int64_t b, int64_t e) {
  if constexpr (is_reduced_float<E> && std::is_same<T, float>::value) {
    at::vec::convert(src + b, dst + b, e - b);
  } else {
    for (int64_t i = b; i < e; ++i) dst[i] = static_cast<E>(src[i]);
  }
}

// x <- (log x if take_log) * scale over [b, e); returns max.
template <typename T>
T transform_max(T* x, int64_t b, int64_t e, T scale, bool take_log) {
  Vec<T> vmax(-std::numeric_limits<T>::infinity());
  const Vec<T> vscale(scale);
  for_lanes<T>(b, e, [&](int64_t i, int64_t n) {
    Vec<T> v = load(x, i, n);
    if (take_log) v = v.log();
    v = v * vscale;
    store(x, i, n, v);
    vmax = at::vec::maximum(vmax, keep(v, -std::numeric_limits<T>::infinity(), n));
  });
  return lanes_max(vmax);
}

// out <- exp(x - shift) over [b, e); returns the sum.
template <typename T>
T exp_sum(const T* x, T* out, int64_t b, int64_t e, T shift) {
  Vec<T> acc(0);
  const Vec<T> vshift(shift);
  for_lanes<T>(b, e, [&](int64_t i, int64_t n) {
    Vec<T> v = fast_exp(load(x, i, n) - vshift);
    store(out, i, n, v);
    acc = acc + keep(v, T(0), n);
  });
  return lanes_sum(acc);
}

// Converts a source row into workspace `x`, applies (log) and 1/T, returns the row max.
template <typename T, typename E>
T load_row(const Exec& ex, const E* src, T* x, int64_t C, T scale, bool take_log) {
  return ex.max<T>(C, [&](int64_t b, int64_t e) {
    convert_row(src, x, b, e);
    return transform_max(x, b, e, scale, take_log);
  });
}

// From tempered values x (max m): x <- log p, p <- p.  Returns nothing; uses `p` as the exp buffer.
template <typename T>
void log_softmax_row(const Exec& ex, T* x, T* p, int64_t C, T m) {
  const T z = ex.sum<T>(C, [&](int64_t b, int64_t e) { return exp_sum(x, p, b, e, m); });
  const T log_z = std::log(z);
  const Vec<T> vm(m), vlz(log_z), vinv(T(1) / z);
  ex.each(C, [&](int64_t b, int64_t e) {
    for_lanes<T>(b, e, [&](int64_t i, int64_t n) {
      store(x, i, n, (load(x, i, n) - vm) - vlz);
      store(p, i, n, load(p, i, n) * vinv);
    });
  });
}

template <typename T>
struct Workspace {
  std::vector<T> buf;
  std::vector<T> ensemble;  // [K, C] teacher log-probabilities, only for K > 1
  T *lps, *ps, *lpt, *pt, *tmp, *grad;
  explicit Workspace(int64_t C) : buf(static_cast<size_t>(6 * C)) {
    T* base = buf.data();
    lps = base;
    ps = base + C;
    lpt = base + 2 * C;
    pt = base + 3 * C;
    tmp = base + 4 * C;
    grad = base + 5 * C;
  }
};

template <typename T>
struct RowResult {
  T soft = 0;
  bool bad_label = false;
};

// Teacher distribution of one row into ws.lpt / ws.pt (ensemble: mean of the tempered probabilities).
template <typename T, typename TE>
void teacher_row(const Exec& ex, const KdParams& p, int64_t r, Workspace<T>& ws, T inv_t) {
  const int64_t C = p.n_classes;
  const bool take_log = p.teacher_format == kProbs;
  const TE* base = static_cast<const TE*>(p.teacher) + r * p.teacher_row_stride;
  if (p.n_teachers == 1) {
    const T m = load_row(ex, base, ws.lpt, C, inv_t, take_log);
    log_softmax_row(ex, ws.lpt, ws.pt, C, m);
    return;
  }
  // Ensemble: p_t = mean_k q_k, combined in log space (log p_t = logsumexp_k log q_k - log K), so a class
  // whose probability underflows float32 under every teacher (low temperature) keeps a finite log p_t.
  const int64_t K = p.n_teachers;
  if (static_cast<int64_t>(ws.ensemble.size()) < K * C) ws.ensemble.resize(static_cast<size_t>(K * C));
  T* lq = ws.ensemble.data();
  for (int64_t k = 0; k < K; ++k) {
    T* row = lq + k * C;
    const T m = load_row(ex, base + k * p.teacher_k_stride, row, C, inv_t, take_log);
    const T z = ex.sum<T>(C, [&](int64_t b, int64_t e) { return exp_sum(row, ws.tmp, b, e, m); });
    const Vec<T> vshift(m + std::log(z));
    ex.each(C, [&](int64_t b, int64_t e) {
      for_lanes<T>(b, e, [&](int64_t i, int64_t n) { store(row, i, n, load(row, i, n) - vshift); });
    });
  }
  const T ninf = -std::numeric_limits<T>::infinity();
  const Vec<T> vninf(ninf), vzero(0), vlog_k(std::log(static_cast<T>(K)));
  ex.each(C, [&](int64_t b, int64_t e) {
    for_lanes<T>(b, e, [&](int64_t i, int64_t n) {
      Vec<T> m = vninf;
      for (int64_t k = 0; k < K; ++k) m = at::vec::maximum(m, load(lq + k * C, i, n));
      m = Vec<T>::blendv(m, vzero, m == vninf);  // every teacher -inf here: avoid -inf - -inf
      Vec<T> acc(0);
      for (int64_t k = 0; k < K; ++k) acc = acc + fast_exp(load(lq + k * C, i, n) - m);
      const Vec<T> lpt = m + acc.log() - vlog_k;
      store(ws.lpt, i, n, lpt);
      store(ws.pt, i, n, fast_exp(lpt));
    });
  });
}

// Soft divergence of one row from ws.{lps, ps, lpt, pt}; writes d soft / d (s/T) into ws.grad.
template <typename T>
T divergence_row(const Exec& ex, const KdParams& p, Workspace<T>& ws, bool want_grad) {
  const int64_t C = p.n_classes;
  const Vec<T> zero(0);
  const T* lps = ws.lps;
  const T* ps = ws.ps;
  const T* lpt = ws.lpt;
  const T* pt = ws.pt;
  T* g = ws.grad;

  if (p.divergence == kKL || p.divergence == kSoftCE) {
    const bool kl = p.divergence == kKL;
    return ex.sum<T>(C, [&](int64_t b, int64_t e) {
      Vec<T> acc(0);
      for_lanes<T>(b, e, [&](int64_t i, int64_t n) {
        const Vec<T> vpt = load(pt, i, n), vps = load(ps, i, n), vlps = load(lps, i, n);
        const Vec<T> diff = kl ? load(lpt, i, n) - vlps : zero - vlps;
        acc = acc + keep(Vec<T>::blendv(vpt * diff, zero, vpt == zero), T(0), n);
        if (want_grad) store(g, i, n, vps - vpt);
      });
      return lanes_sum(acc);
    });
  }

  if (p.divergence == kReverseKL) {
    const T loss = ex.sum<T>(C, [&](int64_t b, int64_t e) {
      Vec<T> acc(0);
      for_lanes<T>(b, e, [&](int64_t i, int64_t n) {
        const Vec<T> vps = load(ps, i, n);
        const Vec<T> w = Vec<T>::blendv(load(lps, i, n) - load(lpt, i, n), zero, vps == zero);
        acc = acc + keep(Vec<T>::blendv(vps * w, zero, vps == zero), T(0), n);
        if (want_grad) store(g, i, n, w);
      });
      return lanes_sum(acc);
    });
    if (want_grad) {
      const Vec<T> vloss(loss);
      ex.each(C, [&](int64_t b, int64_t e) {
        for_lanes<T>(b, e, [&](int64_t i, int64_t n) {
          const Vec<T> vps = load(ps, i, n);
          store(g, i, n, Vec<T>::blendv(vps * (load(g, i, n) - vloss), zero, vps == zero));
        });
      });
    }
    return loss;
  }

  // Generalised JSD, 0 < beta < 1.
  const T beta = static_cast<T>(p.beta);
  const Vec<T> vb(beta), vb1(T(1) - beta), tiny(std::numeric_limits<T>::min());
  struct Pair {
    T t, s;
  };
  const Pair parts = [&]() {
    auto f = [&](int64_t b, int64_t e) {
      Vec<T> acc_t(0), acc_s(0);
      for_lanes<T>(b, e, [&](int64_t i, int64_t n) {
        const Vec<T> vpt = load(pt, i, n), vps = load(ps, i, n);
        const Vec<T> lm = at::vec::maximum(vb * vpt + vb1 * vps, tiny).log();
        acc_t = acc_t + keep(Vec<T>::blendv(vpt * (load(lpt, i, n) - lm), zero, vpt == zero), T(0), n);
        const Vec<T> w = Vec<T>::blendv(load(lps, i, n) - lm, zero, vps == zero);
        acc_s = acc_s + keep(Vec<T>::blendv(vps * w, zero, vps == zero), T(0), n);
        if (want_grad) store(g, i, n, w);
      });
      return Pair{lanes_sum(acc_t), lanes_sum(acc_s)};
    };
    if (!ex.split || C <= kClassGrain) return f(0, C);
    return at::parallel_reduce(0, C, kClassGrain, Pair{0, 0}, [&](int64_t b, int64_t e, Pair) { return f(b, e); },
                               [](Pair a, Pair b) { return Pair{a.t + b.t, a.s + b.s}; });
  }();
  if (want_grad) {
    const Vec<T> vs(parts.s);
    ex.each(C, [&](int64_t b, int64_t e) {
      for_lanes<T>(b, e, [&](int64_t i, int64_t n) {
        const Vec<T> vps = load(ps, i, n);
        store(g, i, n, vb1 * Vec<T>::blendv(vps * (load(g, i, n) - vs), zero, vps == zero));
      });
    });
  }
  return beta * parts.t + (T(1) - beta) * parts.s;
}

// MSE on raw logits against the mean teacher logits; writes d/ds into ws.grad.
template <typename T, typename SE, typename TE>
T mse_row(const Exec& ex, const KdParams& p, int64_t r, Workspace<T>& ws, bool want_grad) {
  const int64_t C = p.n_classes;
  const SE* s = static_cast<const SE*>(p.student) + r * p.student_row_stride;
  const TE* t = static_cast<const TE*>(p.teacher) + r * p.teacher_row_stride;
  const T inv_k = T(1) / static_cast<T>(p.n_teachers);
  const T inv_c = T(1) / static_cast<T>(C);
  const T ninf = -std::numeric_limits<T>::infinity();
  const Vec<T> zero(0), two_inv_c(T(2) * inv_c);
  return ex.sum<T>(C, [&](int64_t b, int64_t e) {
    convert_row(s, ws.lps, b, e);
    convert_row(t, ws.pt, b, e);
    for (int64_t k = 1; k < p.n_teachers; ++k) {
      const TE* tk = t + k * p.teacher_k_stride;
      for (int64_t i = b; i < e; ++i) ws.pt[i] += static_cast<T>(tk[i]);
    }
    Vec<T> acc(0);
    for_lanes<T>(b, e, [&](int64_t i, int64_t n) {
      const Vec<T> target = load(ws.pt, i, n) * Vec<T>(inv_k);
      const Vec<T> valid = target != Vec<T>(ninf);
      const Vec<T> diff = Vec<T>::blendv(zero, load(ws.lps, i, n) - target, valid);
      acc = acc + keep(diff * diff, T(0), n);
      if (want_grad) store(ws.grad, i, n, diff * two_inv_c);
    });
    return lanes_sum(acc) * inv_c;
  });
}

// A row of element type E as a float pointer: the row itself when E is the compute type, else a
// converted copy in `scratch` (done chunk by chunk inside the first pass that needs it).
template <typename T, typename E>
inline const T* as_compute(const E* row, T* scratch) {
  if constexpr (std::is_same<E, T>::value) {
    return row;
  } else {
    return scratch;
  }
}

// Fast path for the common case (forward KL or soft CE, one teacher given as logits/log-probs, hard
// term only at T = 1): three passes over the row, the first from DRAM and the others from cache, two
// exponentials per class, and the gradient written straight into the output.
template <typename T, typename SE, typename TE>
T kl_one_teacher_row(const Exec& ex, const KdParams& p, int64_t r, Workspace<T>& ws, SE* grad_out, int64_t label,
                     bool hard, T weight) {
  const int64_t C = p.n_classes;
  const SE* s_row = static_cast<const SE*>(p.student) + r * p.student_row_stride;
  const TE* t_row = static_cast<const TE*>(p.teacher) + r * p.teacher_row_stride;
  const T* s = as_compute<T>(s_row, ws.lps);
  const T* t = as_compute<T>(t_row, ws.lpt);
  const T ninf = -std::numeric_limits<T>::infinity();
  struct Max2 {
    T s, t;
  };
  auto max_pass = [&](int64_t b, int64_t e) {
    if constexpr (!std::is_same<SE, T>::value) convert_row(s_row, ws.lps, b, e);
    if constexpr (!std::is_same<TE, T>::value) convert_row(t_row, ws.lpt, b, e);
    Vec<T> ms(ninf), mt(ninf);
    for_lanes<T>(b, e, [&](int64_t i, int64_t n) {
      ms = at::vec::maximum(ms, keep(load(s, i, n), ninf, n));
      mt = at::vec::maximum(mt, keep(load(t, i, n), ninf, n));
    });
    return Max2{lanes_max(ms), lanes_max(mt)};
  };
  const Max2 m = (!ex.split || C <= kClassGrain)
                     ? max_pass(0, C)
                     : at::parallel_reduce(0, C, kClassGrain, Max2{ninf, ninf},
                                           [&](int64_t b, int64_t e, Max2) { return max_pass(b, e); },
                                           [](Max2 a, Max2 b) { return Max2{nan_max(a.s, b.s), nan_max(a.t, b.t)}; });

  const bool want_grad = p.compute_grad;
  if (!std::isfinite(m.s) || !std::isfinite(m.t)) {
    // NaN or +inf somewhere, or a row of only -inf: no distribution.  NaN out, as the reference does;
    // checking once here lets the hot loops below use exp without per-element NaN care.
    const T nan = std::numeric_limits<T>::quiet_NaN();
    if (want_grad) ex.each(C, [&](int64_t b, int64_t e) { std::fill(grad_out + b, grad_out + e, static_cast<SE>(nan)); });
    return nan;
  }
  const T inv_t = T(1) / static_cast<T>(p.temperature);
  const Vec<T> vinv_t(inv_t), vshift_s(-m.s * inv_t), vshift_t(-m.t * inv_t);
  struct Sum2 {
    T s, t;
  };
  auto exp_pass = [&](int64_t b, int64_t e) {
    Vec<T> zs(0), zt(0);
    for_lanes<T>(b, e, [&](int64_t i, int64_t n) {
      const Vec<T> es = exp_finite(at::vec::fmadd(load(s, i, n), vinv_t, vshift_s));
      const Vec<T> et = exp_finite(at::vec::fmadd(load(t, i, n), vinv_t, vshift_t));
      store(ws.ps, i, n, es);
      store(ws.pt, i, n, et);
      zs = zs + keep(es, T(0), n);
      zt = zt + keep(et, T(0), n);
    });
    return Sum2{lanes_sum(zs), lanes_sum(zt)};
  };
  const Sum2 z = (!ex.split || C <= kClassGrain)
                     ? exp_pass(0, C)
                     : at::parallel_reduce(0, C, kClassGrain, Sum2{0, 0},
                                           [&](int64_t b, int64_t e, Sum2) { return exp_pass(b, e); },
                                           [](Sum2 a, Sum2 b) { return Sum2{a.s + b.s, a.t + b.t}; });

  const bool kl = p.divergence == kKL;
  const T s_label = hard ? s[label] : T(0);  // read before the gradient may overwrite it (in place)
  const T alpha = static_cast<T>(p.alpha);
  const T scale = p.scale_t2 ? static_cast<T>(p.temperature * p.temperature) : T(1);
  const T coef = weight * (T(1) - alpha) * scale * inv_t;
  const T hard_coef = hard ? weight * alpha : T(0);
  const T lzs = std::log(z.s), lzt = std::log(z.t);
  // log p_t - log p_s = (t - s) / T + c_kl  and  -log p_s = -s / T + c_ce, with the row constants:
  const T c_kl = (m.s - m.t) * inv_t + lzs - lzt;
  const T c_ce = m.s * inv_t + lzs;
  // grad = coef (p_s - p_t) + hard_coef p_s = e_s * a - e_t * b (minus hard_coef at the label)
  const Vec<T> zero(0), va((coef + hard_coef) / z.s), vb(coef / z.t), vc(kl ? c_kl : c_ce), vneg_inv_t(-inv_t);
  constexpr bool direct = std::is_same<SE, T>::value;
  T* dst = direct ? reinterpret_cast<T*>(grad_out) : ws.grad;
  const T weighted_sum = ex.sum<T>(C, [&](int64_t b, int64_t e) {
    Vec<T> acc(0);
    for_lanes<T>(b, e, [&](int64_t i, int64_t n) {
      const Vec<T> vs = load(s, i, n);
      const Vec<T> et = load(ws.pt, i, n);
      const Vec<T> diff = kl ? at::vec::fmadd(load(t, i, n) - vs, vinv_t, vc) : at::vec::fmadd(vs, vneg_inv_t, vc);
      acc = acc + keep(Vec<T>::blendv(et * diff, zero, et == zero), T(0), n);
      if (want_grad) {
        const Vec<T> g = at::vec::fmsub(load(ws.ps, i, n), va, et * vb);
        if constexpr (direct) {
          store_streaming(dst, i, n, g);
        } else {
          store(dst, i, n, g);
        }
      }
    });
    if (want_grad) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
      if constexpr (direct) _mm_sfence();  // order the streaming stores before anything reads the gradient
#endif
      if (hard && label >= b && label < e) dst[label] -= hard_coef;
      if constexpr (!direct) {
        store_row(dst, grad_out, b, e);
      }
    }
    return lanes_sum(acc);
  });
  T loss = (T(1) - alpha) * scale * weighted_sum / z.t;  // sum_c e_t diff / Z_t = sum_c p_t diff
  if (hard) {
    const T lse = m.s + lzs;  // T == 1 on this path
    loss += alpha * (lse - s_label);
  }
  return weight * loss;
}

// Rows of at most kSmallC classes (GLUE-style classification): plain scalar code on stack arrays.  The
// vectorised passes cost more in partial-vector handling than the arithmetic for 2-3 classes.
constexpr int64_t kSmallC = 16;

template <typename T, typename SE, typename TE>
T small_row(const KdParams& p, int64_t r, SE* grad_out, int64_t label, bool hard, T weight) {
  const int64_t C = p.n_classes, K = p.n_teachers;
  const SE* s_row = static_cast<const SE*>(p.student) + r * p.student_row_stride;
  const TE* t_row = static_cast<const TE*>(p.teacher) + r * p.teacher_row_stride;
  const T ninf = -std::numeric_limits<T>::infinity();
  const T alpha = static_cast<T>(p.alpha), temperature = static_cast<T>(p.temperature);
  const bool soft = alpha < T(1);
  T s[kSmallC], g[kSmallC], lps[kSmallC], ps[kSmallC], lpt[kSmallC], pt[kSmallC];
  for (int64_t c = 0; c < C; ++c) {
    s[c] = static_cast<T>(s_row[c]);
    g[c] = 0;
  }
  // log_softmax(x * scale) into lp, p
  auto log_softmax = [&](const T* x, T scale, T* lp, T* pr) {
    T m = ninf;
    for (int64_t c = 0; c < C; ++c) m = std::max(m, x[c] * scale);
    T z = 0;
    for (int64_t c = 0; c < C; ++c) {
      pr[c] = std::exp(x[c] * scale - m);
      z += pr[c];
    }
    const T lz = std::log(z), inv_z = T(1) / z;
    for (int64_t c = 0; c < C; ++c) {
      lp[c] = (x[c] * scale - m) - lz;
      pr[c] *= inv_z;
    }
  };
  T loss = 0;
  if (soft && p.divergence == kMSE) {
    for (int64_t c = 0; c < C; ++c) {
      T target = 0;
      for (int64_t k = 0; k < K; ++k) target += static_cast<T>(t_row[k * p.teacher_k_stride + c]);
      target /= static_cast<T>(K);
      const T diff = target == ninf ? T(0) : s[c] - target;
      loss += diff * diff / static_cast<T>(C);
      g[c] = (T(1) - alpha) * T(2) * diff / static_cast<T>(C);
    }
    loss *= T(1) - alpha;
  } else if (soft) {
    const T inv_t = T(1) / temperature;
    log_softmax(s, inv_t, lps, ps);
    T u[kSmallC], lq[kSmallC];
    for (int64_t c = 0; c < C; ++c) lpt[c] = ninf;
    for (int64_t k = 0; k < K && K > 1; ++k) {  // log p_t = logsumexp_k log q_k - log K
      for (int64_t c = 0; c < C; ++c) {
        const T v = static_cast<T>(t_row[k * p.teacher_k_stride + c]);
        u[c] = p.teacher_format == kProbs ? std::log(v) : v;
      }
      log_softmax(u, inv_t, lq, pt);
      for (int64_t c = 0; c < C; ++c) {
        if (std::isnan(lpt[c]) || std::isnan(lq[c])) {  // std::max would drop a NaN
          lpt[c] = lpt[c] + lq[c];
          continue;
        }
        const T hi = std::max(lpt[c], lq[c]), lo = std::min(lpt[c], lq[c]);
        lpt[c] = hi == ninf ? ninf : hi + std::log1p(std::exp(lo - hi));
      }
    }
    if (K == 1) {
      for (int64_t c = 0; c < C; ++c) {
        const T v = static_cast<T>(t_row[c]);
        u[c] = p.teacher_format == kProbs ? std::log(v) : v;
      }
      log_softmax(u, inv_t, lpt, pt);
    } else {
      const T log_k = std::log(static_cast<T>(K));
      for (int64_t c = 0; c < C; ++c) {
        lpt[c] -= log_k;
        pt[c] = std::exp(lpt[c]);
      }
    }
    T soft_loss = 0;
    if (p.divergence == kKL || p.divergence == kSoftCE) {
      for (int64_t c = 0; c < C; ++c) {
        if (pt[c] != T(0)) soft_loss += pt[c] * ((p.divergence == kKL ? lpt[c] : T(0)) - lps[c]);
        g[c] = ps[c] - pt[c];
      }
    } else if (p.divergence == kReverseKL) {
      for (int64_t c = 0; c < C; ++c) {
        g[c] = ps[c] != T(0) ? lps[c] - lpt[c] : T(0);
        if (ps[c] != T(0)) soft_loss += ps[c] * g[c];
      }
      for (int64_t c = 0; c < C; ++c) g[c] = ps[c] != T(0) ? ps[c] * (g[c] - soft_loss) : T(0);
    } else {  // JSD
      const T beta = static_cast<T>(p.beta);
      T part_t = 0, part_s = 0;
      for (int64_t c = 0; c < C; ++c) {
        const T lm = std::log(std::max(beta * pt[c] + (T(1) - beta) * ps[c], std::numeric_limits<T>::min()));
        if (pt[c] != T(0)) part_t += pt[c] * (lpt[c] - lm);
        g[c] = ps[c] != T(0) ? lps[c] - lm : T(0);
        if (ps[c] != T(0)) part_s += ps[c] * g[c];
      }
      for (int64_t c = 0; c < C; ++c) g[c] = ps[c] != T(0) ? (T(1) - beta) * ps[c] * (g[c] - part_s) : T(0);
      soft_loss = beta * part_t + (T(1) - beta) * part_s;
    }
    const T scale = p.scale_t2 ? temperature * temperature : T(1);
    loss = (T(1) - alpha) * scale * soft_loss;
    for (int64_t c = 0; c < C; ++c) g[c] *= (T(1) - alpha) * scale * inv_t;
  }
  if (hard) {
    if (!(soft && p.divergence != kMSE && temperature == T(1))) log_softmax(s, T(1), lps, ps);
    loss += alpha * -lps[label];
    for (int64_t c = 0; c < C; ++c) g[c] += alpha * ps[c];
    g[label] -= alpha;
  }
  if (p.compute_grad) {
    for (int64_t c = 0; c < C; ++c) grad_out[c] = static_cast<SE>(weight * g[c]);
  }
  return weight * loss;
}

template <typename T, typename SE, typename TE>
void process_row(const Exec& ex, const KdParams& p, int64_t r, Workspace<T>& ws, T& loss_out) {
  const int64_t C = p.n_classes;
  const SE* s = static_cast<const SE*>(p.student) + r * p.student_row_stride;
  SE* grad_out = p.compute_grad ? static_cast<SE*>(p.grad) + r * p.grad_row_stride : nullptr;
  const bool want_grad = p.compute_grad;

  bool active = p.mask == nullptr || p.mask[r];
  int64_t label = -1;
  if (p.labels != nullptr) {
    label = p.labels[r];
    active = active && label != p.ignore_index;
  }
  T weight = static_cast<T>(p.loss_scale);
  if (p.row_weight != nullptr) weight *= static_cast<const T*>(p.row_weight)[r];
  if (!active || weight == T(0)) {
    loss_out = 0;
    if (want_grad) ex.each(C, [&](int64_t b, int64_t e) { std::fill(grad_out + b, grad_out + e, SE(0)); });
    return;
  }
  const T temperature = static_cast<T>(p.temperature);
  const T alpha = static_cast<T>(p.alpha);
  const bool hard = alpha > T(0) && p.labels != nullptr;
  const bool soft = alpha < T(1);
  if (hard && (label < 0 || label >= C)) {
    loss_out = std::numeric_limits<T>::quiet_NaN();
    if (want_grad) {
      ex.each(C, [&](int64_t b, int64_t e) {
        std::fill(grad_out + b, grad_out + e, static_cast<SE>(std::numeric_limits<T>::quiet_NaN()));
      });
    }
    return;
  }
  if (C <= kSmallC) {
    loss_out = small_row<T, SE, TE>(p, r, grad_out, label, hard, weight);
    return;
  }
  if (soft && p.n_teachers == 1 && p.teacher_format != kProbs && (p.divergence == kKL || p.divergence == kSoftCE) &&
      (!hard || temperature == T(1))) {
    loss_out = kl_one_teacher_row<T, SE, TE>(ex, p, r, ws, grad_out, label, hard, weight);
    return;
  }

  T loss = 0;
  T coef = 0;  // d loss / d (soft-gradient buffer)
  const bool mse = p.divergence == kMSE;
  if (soft) {
    if (mse) {
      loss = (T(1) - alpha) * mse_row<T, SE, TE>(ex, p, r, ws, want_grad);
      coef = T(1) - alpha;
    } else {
      const T inv_t = T(1) / temperature;
      const T ms = load_row(ex, s, ws.lps, C, inv_t, false);
      log_softmax_row(ex, ws.lps, ws.ps, C, ms);
      teacher_row<T, TE>(ex, p, r, ws, inv_t);
      const T scale = p.scale_t2 ? temperature * temperature : T(1);
      loss = (T(1) - alpha) * scale * divergence_row(ex, p, ws, want_grad);
      coef = (T(1) - alpha) * scale * inv_t;
    }
  }

  // Hard-label CE at T = 1.  Reuses the student softmax when it was computed at T = 1.
  const T* p1 = nullptr;
  if (hard) {
    const T s_label = static_cast<T>(s[label]);
    T lse1;
    if (soft && !mse && temperature == T(1)) {
      lse1 = s_label - ws.lps[label];  // log p_s[y] = s_y - lse
      p1 = ws.ps;
    } else {
      const T m1 = load_row(ex, s, ws.tmp, C, T(1), false);
      const T z1 = ex.sum<T>(C, [&](int64_t b, int64_t e) { return exp_sum(ws.tmp, ws.tmp, b, e, m1); });
      const Vec<T> vinv(T(1) / z1);
      ex.each(C, [&](int64_t b, int64_t e) {
        for_lanes<T>(b, e, [&](int64_t i, int64_t n) { store(ws.tmp, i, n, load(ws.tmp, i, n) * vinv); });
      });
      lse1 = m1 + std::log(z1);
      p1 = ws.tmp;
    }
    loss += alpha * (lse1 - s_label);
  }
  loss_out = weight * loss;
  if (!want_grad) return;

  // grad = coef * soft_grad + alpha * (p1 - onehot(label)), stored in the student's dtype (directly
  // into the output when that is the compute type, else through the workspace and one conversion).
  constexpr bool direct = std::is_same<SE, T>::value;
  const Vec<T> vcoef(weight * coef), valpha(weight * alpha);
  const T* g = ws.grad;
  T* dst = direct ? reinterpret_cast<T*>(grad_out) : ws.grad;
  ex.each(C, [&](int64_t b, int64_t e) {
    for_lanes<T>(b, e, [&](int64_t i, int64_t n) {
      Vec<T> v = soft ? load(g, i, n) * vcoef : Vec<T>(0);
      if (hard) v = v + load(p1, i, n) * valpha;
      store(dst, i, n, v);
    });
    if (hard && label >= b && label < e) dst[label] -= weight * alpha;
    if constexpr (!direct) {
      store_row(dst, grad_out, b, e);
    }
  });
}

template <typename T, typename SE, typename TE>
void run_rows(const KdParams& p) {
  const int64_t N = p.n_rows, C = p.n_classes;
  T* loss = static_cast<T*>(p.loss_rows);
  const int64_t threads = at::get_num_threads();
  const bool split_classes = N < threads && C > kClassGrain && !at::in_parallel_region();
  if (split_classes) {
    Workspace<T> ws(C);
    const Exec ex{true};
    for (int64_t r = 0; r < N; ++r) process_row<T, SE, TE>(ex, p, r, ws, loss[r]);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1));  // >= ~4k elements per task
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    Workspace<T> ws(C);
    const Exec ex{false};
    for (int64_t r = begin; r < end; ++r) process_row<T, SE, TE>(ex, p, r, ws, loss[r]);
  });
}

template <typename T, typename SE>
void dispatch_teacher(const KdParams& p) {
  switch (p.teacher_type) {
    case kFloat32: return run_rows<T, SE, float>(p);
    case kBFloat16: return run_rows<T, SE, c10::BFloat16>(p);
    case kFloat16: return run_rows<T, SE, c10::Half>(p);
    case kFloat64: return run_rows<T, SE, double>(p);
    default: throw std::invalid_argument("teacher_logits: unsupported dtype code");
  }
}

template <typename T, typename E>
void scale_rows_typed(const void* grad, const void* row_scale, void* out, int64_t n_rows, int64_t n_cols,
                      int64_t in_stride, int64_t out_stride) {
  const E* g = static_cast<const E*>(grad);
  const T* scale = static_cast<const T*>(row_scale);
  E* o = static_cast<E*>(out);
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, n_cols));
  at::parallel_for(0, n_rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T sc = scale[r];
      const E* src = g + r * in_stride;
      E* dst = o + r * out_stride;
      if constexpr (std::is_same<E, T>::value) {
        const Vec<T> vs(sc);
        for_lanes<T>(0, n_cols, [&](int64_t i, int64_t n) { store(dst, i, n, load(src, i, n) * vs); });
      } else {
        for (int64_t i = 0; i < n_cols; ++i) dst[i] = static_cast<E>(static_cast<T>(src[i]) * sc);
      }
    }
  });
}

}  // namespace

void kd_rows_cpu(const KdParams& p) {
  if (p.n_rows == 0) return;
  if (p.student_type == kFloat64) {
    if (p.teacher_type != kFloat64) throw std::invalid_argument("teacher_logits: must be float64 with a float64 student");
    return run_rows<double, double, double>(p);
  }
  switch (p.student_type) {
    case kFloat32: return dispatch_teacher<float, float>(p);
    case kBFloat16: return dispatch_teacher<float, c10::BFloat16>(p);
    case kFloat16: return dispatch_teacher<float, c10::Half>(p);
    default: throw std::invalid_argument("student_logits: unsupported dtype code");
  }
}

void scale_rows_cpu(const void* grad, int32_t grad_type, const void* row_scale, void* out, int64_t n_rows,
                    int64_t n_cols, int64_t in_stride, int64_t out_stride) {
  switch (grad_type) {
    case kFloat32: return scale_rows_typed<float, float>(grad, row_scale, out, n_rows, n_cols, in_stride, out_stride);
    case kBFloat16:
      return scale_rows_typed<float, c10::BFloat16>(grad, row_scale, out, n_rows, n_cols, in_stride, out_stride);
    case kFloat16: return scale_rows_typed<float, c10::Half>(grad, row_scale, out, n_rows, n_cols, in_stride, out_stride);
    case kFloat64: return scale_rows_typed<double, double>(grad, row_scale, out, n_rows, n_cols, in_stride, out_stride);
    default: throw std::invalid_argument("grad: unsupported dtype code");
  }
}

const char* compiled_capability() {
#if defined(CPU_CAPABILITY_AVX512)
  return "AVX512";
#elif defined(CPU_CAPABILITY_AVX2)
  return "AVX2";
#else
  return "DEFAULT";
#endif
}

}  // namespace cpu
}  // namespace mkd_fast
