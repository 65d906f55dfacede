// Fused CPU kernels for CBAM (channel-first order).
//
// Notation: x (B, C, P) with P = H*W, stored NCHW (x[b][c][p]) or channels-last
// (x[b][p][c]); g (B, C) the channel gate; a (B, P) the spatial gate; peak (B, P)
// the channel max of g x.
//
// Per-sample passes (each reads one sample of x once):
//   hw_pool       avg_p x and max_p x (= top), per channel
//   channel_pool  mean_c(g x), max_c(g x), per position
//   apply         out = x g a
//   gates         da = sum_c g x dout, dg = sum_p x dout a, count = #{c : g x = peak},
//                 count_hw = #{p : x = top}
//   mask          dg2 = sum_p x (dmean + [g x = peak] share)
//   input         dx = g (dout a + dmean + [g x = peak] share) + davg + [x = top] top_share
//
// Both max pools pass their gradient to every tied element in equal parts, as autograd
// does for amax (share = dpeak / count, top_share = dtop / count_hw).
//
// The ops ``forward``/``backward`` run the whole layer per sample for the paper's
// configuration (ReLU MLP, sigmoid gates, k x k convolution with bias, no norm): the MLP
// and the convolution are computed here, so a sample is read from memory once per
// direction and stays in cache for the passes that follow. Only the CPU kernels are
// registered here; the fake (shape) and autograd formulas are registered from Python
// (convattn/layers/cbam.py), where the backward gives way to a differentiable
// formulation when a graph of the gradient is asked for.

#include "common.h"

#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace {

using namespace convattn_kernels;

// ---------------------------------------------------------------------------------------
// Per-sample passes. ``x``, ``dout``, ``out`` point at one sample; ``tmp`` holds max(C, P).

template <typename T>
void hw_pool_sample(const T* __restrict__ x, int64_t C, int64_t P, bool cl, T* __restrict__ avg,
                    T* __restrict__ mx) {
  if (!cl) {
    for (int64_t c = 0; c < C; ++c) {
      const T* __restrict__ v = x + c * P;
      T s = 0, m = neg_inf<T>();
      _Pragma("omp simd reduction(+ : s) reduction(max : m)") for (int64_t i = 0; i < P; ++i) {
        s += v[i];
        m = v[i] > m ? v[i] : m;
      }
      avg[c] = s / P;
      mx[c] = m;
    }
  } else {
    std::fill(avg, avg + C, T(0));
    std::fill(mx, mx + C, neg_inf<T>());
    for (int64_t p = 0; p < P; ++p) {
      const T* __restrict__ row = x + p * C;
      _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) {
        avg[c] += row[c];
        mx[c] = row[c] > mx[c] ? row[c] : mx[c];
      }
    }
    _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) avg[c] /= P;
  }
}

template <typename T>
void channel_pool_sample(const T* __restrict__ x, int64_t C, int64_t P, bool cl, const T* __restrict__ g,
                         T* __restrict__ mean, T* __restrict__ peak) {
  if (!cl) {
    std::fill(mean, mean + P, T(0));
    std::fill(peak, peak + P, neg_inf<T>());
    for (int64_t c = 0; c < C; ++c) {
      const T* __restrict__ row = x + c * P;
      const T gc = g[c];
      _Pragma("omp simd") for (int64_t p = 0; p < P; ++p) {
        const T u = gc * row[p];
        mean[p] += u;
        peak[p] = u > peak[p] ? u : peak[p];
      }
    }
    _Pragma("omp simd") for (int64_t p = 0; p < P; ++p) mean[p] /= C;
  } else {
    for (int64_t p = 0; p < P; ++p) {
      const T* __restrict__ row = x + p * C;
      T s = 0, m = neg_inf<T>();
      _Pragma("omp simd reduction(+ : s) reduction(max : m)") for (int64_t c = 0; c < C; ++c) {
        const T u = g[c] * row[c];
        s += u;
        m = u > m ? u : m;
      }
      mean[p] = s / C;
      peak[p] = m;
    }
  }
}

template <typename T>
void apply_sample(const T* __restrict__ x, int64_t C, int64_t P, bool cl, const T* __restrict__ g,
                  const T* __restrict__ a, T* __restrict__ out) {
  if (!cl) {
    for (int64_t c = 0; c < C; ++c) {
      const T gc = g[c];
      const T* __restrict__ row = x + c * P;
      T* __restrict__ o = out + c * P;
      _Pragma("omp simd") for (int64_t p = 0; p < P; ++p) o[p] = row[p] * gc * a[p];
    }
  } else {
    for (int64_t p = 0; p < P; ++p) {
      const T ap = a[p];
      const T* __restrict__ row = x + p * C;
      T* __restrict__ o = out + p * C;
      _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) o[c] = row[c] * g[c] * ap;
    }
  }
}

template <typename T>
void gates_sample(const T* __restrict__ x, const T* __restrict__ dout, int64_t C, int64_t P, bool cl,
                  const T* __restrict__ g, const T* __restrict__ a, const T* __restrict__ peak,
                  const T* __restrict__ top, T* __restrict__ da, T* __restrict__ dg, T* __restrict__ count,
                  T* __restrict__ count_hw, T* __restrict__ tmp) {
  if (!cl) {
    std::fill(da, da + P, T(0));
    std::fill(count, count + P, T(0));
    for (int64_t c = 0; c < C; ++c) {
      const T gc = g[c], tc = top[c];
      const T* __restrict__ row = x + c * P;
      const T* __restrict__ drow = dout + c * P;
      T n = 0;
      _Pragma("omp simd reduction(+ : n)") for (int64_t p = 0; p < P; ++p) {
        const T xd = row[p] * drow[p];
        tmp[p] = xd;
        da[p] += gc * xd;
        count[p] += (gc * row[p] == peak[p]) ? T(1) : T(0);
        n += (row[p] == tc) ? T(1) : T(0);
      }
      dg[c] = dot(tmp, a, P);
      count_hw[c] = n;
    }
  } else {
    std::fill(dg, dg + C, T(0));
    std::fill(count_hw, count_hw + C, T(0));
    for (int64_t p = 0; p < P; ++p) {
      const T* __restrict__ row = x + p * C;
      const T* __restrict__ drow = dout + p * C;
      const T ap = a[p], kp = peak[p];
      T s = 0, n = 0;
      _Pragma("omp simd reduction(+ : s, n)") for (int64_t c = 0; c < C; ++c) {
        const T xd = row[c] * drow[c];
        dg[c] += xd * ap;
        count_hw[c] += (row[c] == top[c]) ? T(1) : T(0);
        s += g[c] * xd;
        n += (g[c] * row[c] == kp) ? T(1) : T(0);
      }
      da[p] = s;
      count[p] = n;
    }
  }
}

template <typename T>
void mask_sample(const T* __restrict__ x, int64_t C, int64_t P, bool cl, const T* __restrict__ g,
                 const T* __restrict__ peak, const T* __restrict__ dmean, const T* __restrict__ share,
                 T* __restrict__ dg, T* __restrict__ tmp) {
  if (!cl) {
    for (int64_t c = 0; c < C; ++c) {
      const T gc = g[c];
      const T* __restrict__ row = x + c * P;
      _Pragma("omp simd") for (int64_t p = 0; p < P; ++p) tmp[p] =
          dmean[p] + ((gc * row[p] == peak[p]) ? share[p] : T(0));
      dg[c] = dot(row, tmp, P);
    }
  } else {
    std::fill(dg, dg + C, T(0));
    for (int64_t p = 0; p < P; ++p) {
      const T* __restrict__ row = x + p * C;
      const T m = dmean[p], s = share[p], k = peak[p];
      _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) dg[c] += row[c] * (m + ((g[c] * row[c] == k) ? s : T(0)));
    }
  }
}

template <typename T>
void input_sample(const T* __restrict__ x, const T* __restrict__ dout, int64_t C, int64_t P, bool cl,
                  const T* __restrict__ g, const T* __restrict__ a, const T* __restrict__ peak,
                  const T* __restrict__ dmean, const T* __restrict__ share, const T* __restrict__ davg,
                  const T* __restrict__ top, const T* __restrict__ top_share, T* __restrict__ dx) {
  if (!cl) {
    for (int64_t c = 0; c < C; ++c) {
      const T gc = g[c], va = davg[c], tc = top[c], ts = top_share[c];
      const T* __restrict__ row = x + c * P;
      const T* __restrict__ drow = dout + c * P;
      T* __restrict__ o = dx + c * P;
      _Pragma("omp simd") for (int64_t p = 0; p < P; ++p) {
        const T t = drow[p] * a[p] + dmean[p] + ((gc * row[p] == peak[p]) ? share[p] : T(0));
        o[p] = gc * t + va + ((row[p] == tc) ? ts : T(0));
      }
    }
  } else {
    for (int64_t p = 0; p < P; ++p) {
      const T* __restrict__ row = x + p * C;
      const T* __restrict__ drow = dout + p * C;
      T* __restrict__ o = dx + p * C;
      const T ap = a[p], m = dmean[p], s = share[p], k = peak[p];
      _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) {
        const T t = drow[c] * ap + m + ((g[c] * row[c] == k) ? s : T(0));
        o[c] = g[c] * t + davg[c] + ((row[c] == top[c]) ? top_share[c] : T(0));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// The whole layer per sample, for the paper's configuration.
//
// Channel MLP:  h_v = relu(W1 v + b1) for v in (avg, max);  g = sigmoid(W2 (h_avg + h_max) + 2 b2)
// Spatial gate: a = sigmoid(conv_k([mean; peak]) + bc), zero padding k / 2

// The k x k convolution over the two pooled maps, zero padding r = k / 2. The maps are
// copied into zero-padded planes of width Wp = W + 2r, and outputs are computed in rows of
// width Wp too (the extra columns are discarded), so each row of taps (ch, i) is one long
// contiguous loop: out[q] += sum_j w[ch][i][j] * pad[ch][q + i Wp + j] for q < H Wp.
struct PaddedShape {
  int64_t H, W, k, r, Hp, Wp, Q;  // Q = H * Wp outputs per plane
  PaddedShape(int64_t H_, int64_t W_, int64_t k_)
      : H(H_), W(W_), k(k_), r(k_ / 2), Hp(H_ + 2 * (k_ / 2)), Wp(W_ + 2 * (k_ / 2)), Q(H_ * (W_ + 2 * (k_ / 2))) {}
  int64_t plane() const { return Hp * Wp + k; }  // + k: the last taps read up to k - 1 past Hp * Wp
};

template <typename T>
void pad_maps(const T* __restrict__ s, const PaddedShape& d, T* __restrict__ pad) {
  std::fill(pad, pad + 2 * d.plane(), T(0));
  for (int64_t ch = 0; ch < 2; ++ch)
    for (int64_t y = 0; y < d.H; ++y)
      std::copy(s + (ch * d.H + y) * d.W, s + (ch * d.H + y + 1) * d.W, pad + ch * d.plane() + (y + d.r) * d.Wp + d.r);
}

// wide[q] += sum_j w[j] src[q + j] for q < n: one row of taps of the convolution. With the
// kernel size known at compile time the taps stay in registers and ``wide`` is loaded and
// stored once per row of taps.
template <typename T, int K>
void taps_fixed(const T* __restrict__ w, const T* __restrict__ src, int64_t n, T* __restrict__ wide) {
  T wk[K];
  for (int j = 0; j < K; ++j) wk[j] = w[j];
  _Pragma("omp simd") for (int64_t q = 0; q < n; ++q) {
    T acc = 0;
    for (int j = 0; j < K; ++j) acc += wk[j] * src[q + j];
    wide[q] += acc;
  }
}

template <typename T>
void taps(const T* __restrict__ w, const T* __restrict__ src, int64_t n, int64_t k, T* __restrict__ wide) {
  switch (k) {
    case 3: return taps_fixed<T, 3>(w, src, n, wide);
    case 5: return taps_fixed<T, 5>(w, src, n, wide);
    case 7: return taps_fixed<T, 7>(w, src, n, wide);
    default:
      for (int64_t j = 0; j < k; ++j) {
        const T wj = w[j];
        _Pragma("omp simd") for (int64_t q = 0; q < n; ++q) wide[q] += wj * src[q + j];
      }
  }
}

// out[j] += sum_q u[q] v[q + j] for j < K: the K sums share one pass and run as K independent
// accumulator chains.
template <typename T, int K>
void correlate_fixed(const T* __restrict__ u, const T* __restrict__ v, int64_t n, T* __restrict__ out) {
  constexpr int V = 16;  // lanes per chain
  T acc[K][V] = {};
  int64_t q = 0;
  for (; q + V <= n; q += V)
    for (int j = 0; j < K; ++j) {
      _Pragma("omp simd") for (int l = 0; l < V; ++l) acc[j][l] += u[q + l] * v[q + j + l];
    }
  for (int j = 0; j < K; ++j) {
    T s = 0;
    for (int l = 0; l < V; ++l) s += acc[j][l];
    for (int64_t t = q; t < n; ++t) s += u[t] * v[t + j];
    out[j] += s;
  }
}

template <typename T>
void correlate(const T* __restrict__ u, const T* __restrict__ v, int64_t n, int64_t k, T* __restrict__ out) {
  switch (k) {
    case 3: return correlate_fixed<T, 3>(u, v, n, out);
    case 5: return correlate_fixed<T, 5>(u, v, n, out);
    case 7: return correlate_fixed<T, 7>(u, v, n, out);
    default:
      for (int64_t j = 0; j < k; ++j) out[j] += dot(u, v + j, n);
  }
}

// logits (H, W) = conv(s) for the stats s (2, H, W); ``pad`` and ``wide`` are scratch.
template <typename T>
void conv_forward(const T* __restrict__ s, const T* __restrict__ w, const PaddedShape& d, T* __restrict__ pad,
                  T* __restrict__ wide, T* __restrict__ logits) {
  pad_maps(s, d, pad);
  std::fill(wide, wide + d.Q, T(0));
  for (int64_t ch = 0; ch < 2; ++ch)
    for (int64_t i = 0; i < d.k; ++i) taps(w + (ch * d.k + i) * d.k, pad + ch * d.plane() + i * d.Wp, d.Q, d.k, wide);
  for (int64_t y = 0; y < d.H; ++y) std::copy(wide + y * d.Wp, wide + y * d.Wp + d.W, logits + y * d.W);
}

// Given the logits' gradient dl (H, W): ds (2, H, W) and dw (2, k, k) += ...; ``pad`` must hold the
// padded stats; ``wide`` (Q + 2k) and ``dpad`` are scratch. The input gradient is the correlation of
// dl with the flipped kernel: dpad[o + t] += sum_j w[k-1-j] wide'[t + j], wide' = dl shifted right by k - 1.
template <typename T>
void conv_backward(const T* __restrict__ dl, const T* __restrict__ w, const PaddedShape& d,
                   const T* __restrict__ pad, T* __restrict__ wide, T* __restrict__ dpad, T* __restrict__ ds,
                   T* __restrict__ dw) {
  const int64_t k = d.k, lead = k - 1;
  std::fill(wide, wide + d.Q + 2 * k, T(0));  // dl in rows of width Wp after k - 1 zeros
  T* __restrict__ rows = wide + lead;
  for (int64_t y = 0; y < d.H; ++y) std::copy(dl + y * d.W, dl + (y + 1) * d.W, rows + y * d.Wp);
  std::fill(dpad, dpad + 2 * d.plane(), T(0));
  std::vector<T> flipped(k);
  for (int64_t ch = 0; ch < 2; ++ch)
    for (int64_t i = 0; i < k; ++i) {
      const T* wr = w + (ch * k + i) * k;
      for (int64_t j = 0; j < k; ++j) flipped[j] = wr[k - 1 - j];
      const int64_t o = ch * d.plane() + i * d.Wp;
      taps(flipped.data(), wide, d.Q + lead, k, dpad + o);  // dpad[o + t], t < Q + k - 1
      correlate(rows, pad + o, d.Q, k, dw + (ch * k + i) * k);
    }
  for (int64_t ch = 0; ch < 2; ++ch)
    for (int64_t y = 0; y < d.H; ++y)
      std::copy(dpad + ch * d.plane() + (y + d.r) * d.Wp + d.r, dpad + ch * d.plane() + (y + d.r) * d.Wp + d.r + d.W,
                ds + (ch * d.H + y) * d.W);
}

struct Params {
  at::Tensor w1, b1, w2, b2, wc, bc;  // b1, b2 may be undefined
};

Params params_of(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                 const at::Tensor& b2, const at::Tensor& wc, const at::Tensor& bc) {
  const int64_t C = x.size(1), R = w1.size(0);
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == C, "cbam: expected fc1.weight of shape (R, ", C, "), got ", w1.sizes());
  TORCH_CHECK(w2.dim() == 2 && w2.size(0) == C && w2.size(1) == R, "cbam: expected fc2.weight of shape (", C, ", ",
              R, "), got ", w2.sizes());
  TORCH_CHECK(wc.dim() == 4 && wc.size(0) == 1 && wc.size(1) == 2 && wc.size(2) == wc.size(3) && wc.size(2) % 2 == 1,
              "cbam: expected a (1, 2, k, k) convolution weight with odd k, got ", wc.sizes());
  TORCH_CHECK(bc.numel() == 1, "cbam: expected a one-element convolution bias, got ", bc.sizes());
  auto t = [&](const at::Tensor& p) {
    if (!p.defined() || !p.numel()) return at::Tensor();
    check_param(p, x, "cbam");
    return p.contiguous();
  };
  Params q{t(w1), t(b1), t(w2), t(b2), t(wc), t(bc)};
  TORCH_CHECK(!q.b1.defined() || q.b1.numel() == R, "cbam: expected fc1.bias of ", R, " elements");
  TORCH_CHECK(!q.b2.defined() || q.b2.numel() == C, "cbam: expected fc2.bias of ", C, " elements");
  return q;
}

// Returns out, g (B, C), a (B, 1, H, W), and for the backward: pooled (B, 2, C: avg, top), hidden (B, 2, R),
// stats (B, 2, H, W: mean, peak).
Tensors6 cbam_forward(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                      const at::Tensor& b2, const at::Tensor& wc, const at::Tensor& bc) {
  check_input(x, "cbam_forward");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), P = H * W;
  const bool cl = is_channels_last(x);
  const Params q = params_of(x, w1, b1, w2, b2, wc, bc);
  const int64_t R = q.w1.size(0), k = q.wc.size(2);
  auto opt = x.options();
  auto out = at::empty_like(x);
  auto g = at::empty({B, C}, opt);
  auto a = at::empty({B, 1, H, W}, opt);
  auto pooled = at::empty({B, 2, C}, opt);
  auto hidden = at::empty({B, 2, R}, opt);
  auto stats = at::empty({B, 2, H, W}, opt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_forward", [&] {
    using T = scalar_t;
    const T* xp = x.const_data_ptr<T>();
    const T* w1p = q.w1.const_data_ptr<T>();
    const T* b1p = q.b1.defined() ? q.b1.const_data_ptr<T>() : nullptr;
    const T* w2p = q.w2.const_data_ptr<T>();
    const T* b2p = q.b2.defined() ? q.b2.const_data_ptr<T>() : nullptr;
    const T* wcp = q.wc.const_data_ptr<T>();
    const T bias_c = q.bc.const_data_ptr<T>()[0];
    const PaddedShape d(H, W, k);
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1_) {
      std::vector<T> hsum(R), pad(2 * d.plane()), wide(d.Q);
      for (int64_t b = b0; b < b1_; ++b) {
        const T* xb = xp + b * C * P;
        T* pb = pooled.data_ptr<T>() + b * 2 * C;
        T* hb = hidden.data_ptr<T>() + b * 2 * R;
        T* gb = g.data_ptr<T>() + b * C;
        T* sb = stats.data_ptr<T>() + b * 2 * P;
        T* ab = a.data_ptr<T>() + b * P;
        hw_pool_sample(xb, C, P, cl, pb, pb + C);
        mlp_forward(w1p, b1p, w2p, b2p, C, R, pb, 2, hb, hsum.data(), gb);
        channel_pool_sample(xb, C, P, cl, gb, sb, sb + P);
        conv_forward(sb, wcp, d, pad.data(), wide.data(), ab);
        for (int64_t p = 0; p < P; ++p) ab[p] = sigmoid(ab[p] + bias_c);
        apply_sample(xb, C, P, cl, gb, ab, out.data_ptr<T>() + b * C * P);
      }
    });
  });
  return {out, g, a, pooled, hidden, stats};
}

// Returns dx, d fc1.weight, d fc1.bias, d fc2.weight, d fc2.bias, d conv.weight, d conv.bias; those not
// computed (dx unless need_dx, absent biases) are empty (0 elements).
Tensors7 cbam_backward(const at::Tensor& x, const at::Tensor& dout_, const at::Tensor& w1, const at::Tensor& b1,
                       const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& wc, const at::Tensor& bc,
                       const at::Tensor& g_, const at::Tensor& a_, const at::Tensor& pooled_,
                       const at::Tensor& hidden_, const at::Tensor& stats_, bool need_dx) {
  check_input(x, "cbam_backward");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), P = H * W;
  const bool cl = is_channels_last(x);
  const Params q = params_of(x, w1, b1, w2, b2, wc, bc);
  const int64_t R = q.w1.size(0), k = q.wc.size(2);
  auto dout = like_x(dout_, x, cl);
  auto g = flat(g_, B, C, x);
  auto a = flat(a_, B, P, x);
  auto pooled = flat(pooled_, B, 2 * C, x);
  auto hidden = flat(hidden_, B, 2 * R, x);
  auto stats = flat(stats_, B, 2 * P, x);
  auto opt = x.options();
  auto dx = need_dx ? at::empty_like(x) : at::empty({0}, opt);
  auto dw1 = at::empty({R, C}, opt), dw2 = at::empty({C, R}, opt), dwc = at::empty({1, 2, k, k}, opt);
  auto db1 = at::empty({R}, opt), db2 = at::empty({C}, opt), dbc = at::empty({1}, opt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_backward", [&] {
    using T = scalar_t;
    const T* xp = x.const_data_ptr<T>();
    const T* dp = dout.const_data_ptr<T>();
    const T* w1p = q.w1.const_data_ptr<T>();
    const T* w2p = q.w2.const_data_ptr<T>();
    const T* wcp = q.wc.const_data_ptr<T>();
    const PaddedShape d(H, W, k);
    // parameter gradients, flat: fc1.weight, fc1.bias, fc2.weight, fc2.bias, conv.weight, conv.bias
    const int64_t o_b1 = R * C, o_w2 = o_b1 + R, o_b2 = o_w2 + C * R, o_wc = o_b2 + C, o_bc = o_wc + 2 * k * k;
    ChunkSums<T> sums(o_bc + 1);
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1_) {
      T* part = sums.open(b0);
      T *gw1 = part, *gb1 = part + o_b1, *gw2 = part + o_w2, *gb2 = part + o_b2, *gwc = part + o_wc;
      T gbc = 0;
      std::vector<T> tmp(std::max(P, C)), da(P), dl(P), count(P), dstats(2 * P), dmean(P), share(P);
      std::vector<T> dg(C), dg2(C), hsum(R), ds(R), dpool(2 * C), count_hw(C);
      std::vector<T> pad(2 * d.plane()), wide(d.Q + 2 * k), dpad(2 * d.plane());
      for (int64_t b = b0; b < b1_; ++b) {
        const T* xb = xp + b * C * P;
        const T* db = dp + b * C * P;
        const T* gb = g.const_data_ptr<T>() + b * C;
        const T* ab = a.const_data_ptr<T>() + b * P;
        const T* pb = pooled.const_data_ptr<T>() + b * 2 * C;
        const T* hb = hidden.const_data_ptr<T>() + b * 2 * R;
        const T* sb = stats.const_data_ptr<T>() + b * 2 * P;
        const T* peak = sb + P;
        gates_sample(xb, db, C, P, cl, gb, ab, peak, pb + C, da.data(), dg.data(), count.data(), count_hw.data(),
                     tmp.data());
        // spatial gate: through the sigmoid, the bias and the convolution
        _Pragma("omp simd reduction(+ : gbc)") for (int64_t p = 0; p < P; ++p) {
          dl[p] = da[p] * ab[p] * (T(1) - ab[p]);
          gbc += dl[p];
        }
        pad_maps(sb, d, pad.data());
        conv_backward(dl.data(), wcp, d, pad.data(), wide.data(), dpad.data(), dstats.data(), gwc);
        for (int64_t p = 0; p < P; ++p) {
          dmean[p] = dstats[p] / C;
          share[p] = dstats[P + p] / count[p];
        }
        mask_sample(xb, C, P, cl, gb, peak, dmean.data(), share.data(), dg2.data(), tmp.data());
        // channel gate: through the sigmoid and the shared MLP
        for (int64_t c = 0; c < C; ++c) dg[c] += dg2[c];
        mlp_backward(w1p, w2p, C, R, pb, 2, hb, gb, dg.data(), hsum.data(), ds.data(), gw1, gb1, gw2, gb2,
                     dpool.data());
        if (need_dx) {
          for (int64_t c = 0; c < C; ++c) {
            dpool[c] /= P;                  // avg over H x W
            dpool[C + c] /= count_hw[c];    // max over H x W: shared by the tied positions
          }
          input_sample(xb, db, C, P, cl, gb, ab, peak, dmean.data(), share.data(), dpool.data(), pb + C,
                       dpool.data() + C, dx.data_ptr<T>() + b * C * P);
        }
      }
      part[o_bc] = gbc;
    });
    const std::vector<T> total = sums.total();
    copy_into(dw1, total.data(), R * C);
    copy_into(db1, total.data() + o_b1, R);
    copy_into(dw2, total.data() + o_w2, C * R);
    copy_into(db2, total.data() + o_b2, C);
    copy_into(dwc, total.data() + o_wc, 2 * k * k);
    copy_into(dbc, total.data() + o_bc, 1);
  });
  auto none = [&] { return at::empty({0}, opt); };  // a new one per absent gradient: outputs never alias
  return {dx, dw1, q.b1.defined() ? db1 : none(), dw2, q.b2.defined() ? db2 : none(), dwc, dbc};
}

}  // namespace

TORCH_LIBRARY(convattn_cbam, m) {
  m.def(
      "forward(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor wc, Tensor bc) -> "
      "(Tensor out, Tensor g, Tensor a, Tensor pooled, Tensor hidden, Tensor stats)");
  m.def(
      "backward(Tensor x, Tensor dout, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor wc, Tensor bc, "
      "Tensor g, Tensor a, Tensor pooled, Tensor hidden, Tensor stats, bool need_dx) -> "
      "(Tensor dx, Tensor dw1, Tensor db1, Tensor dw2, Tensor db2, Tensor dwc, Tensor dbc)");
}

TORCH_LIBRARY_IMPL(convattn_cbam, CPU, m) {
  m.impl("forward", [](const at::Tensor& x, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                       const at::Tensor& w2, const std::optional<at::Tensor>& b2, const at::Tensor& wc,
                       const at::Tensor& bc) {
    return cbam_forward(x, w1, b1.value_or(at::Tensor()), w2, b2.value_or(at::Tensor()), wc, bc);
  });
  m.impl("backward", [](const at::Tensor& x, const at::Tensor& dout, const at::Tensor& w1,
                        const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                        const std::optional<at::Tensor>& b2, const at::Tensor& wc, const at::Tensor& bc,
                        const at::Tensor& g, const at::Tensor& a, const at::Tensor& pooled, const at::Tensor& hidden,
                        const at::Tensor& stats, bool need_dx) {
    return cbam_backward(x, dout, w1, b1.value_or(at::Tensor()), w2, b2.value_or(at::Tensor()), wc, bc, g, a,
                         pooled, hidden, stats, need_dx);
  });
}
