// Fused CPU kernels for CBAM (channel-first order).
//
// Notation: x (B, C, P) with P = H*W, stored NCHW (x[b][c][p]) or channels-last
// (x[b][p][c]); g (B, C) the channel gate; a (B, P) the spatial gate; peak (B, P)
// the channel max of g x.
//
// Per-sample passes (each reads one sample of x once):
//   hw_pool       avg_p x and max_p x (= top), per channel
//   channel_pool  mean_c(g x), max_c(g x), per position
//   apply         out = x g a (with the identity blend: x (1 - gamma + gamma g a))
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
// direction and stays in cache for the passes that follow. ``bn_forward``/``bn_backward``
// serve the configuration with a BatchNorm after the convolution (see below). Only the CPU
// kernels are registered here; the fake (shape) and autograd formulas are registered from
// Python (convattn/layers/_cbam_ops.py), where the backward gives way to a differentiable
// formulation when a graph of the gradient is asked for.

#include "common.h"

#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

using namespace convattn_kernels;

// a[p] = sigmoid((l[p] - center) scale + shift) for p < n: the spatial gate from its logits. In float with
// AVX2 and FMA, eight at a time with Cephes' expf (a degree-5 polynomial after the reduction by ln 2,
// within 2 ulp of e^v; the argument clamped to [-87.3, 88], where the gate is 0 or 1 to float precision).
template <typename T>
void sigmoid_map(const T* l, int64_t n, T center, T scale, T shift, T* a) {  // a may be l
  int64_t p = 0;
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<T, float>) {
    const __m256 c = _mm256_set1_ps(center), sc = _mm256_set1_ps(-scale), sh = _mm256_set1_ps(-shift);
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; p + 8 <= n; p += 8) {
      // v = -z: a = 1 / (1 + e^v)
      __m256 v = _mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(l + p), c), sc, sh);
      v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-87.33654f)), _mm256_set1_ps(88.0f));
      const __m256 k = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(1.44269504088896341f)),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), v);
      r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
      __m256 q = _mm256_set1_ps(1.9875691500e-4f);
      q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.3981999507e-3f));
      q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(8.3334519073e-3f));
      q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(4.1665795894e-2f));
      q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.6666665459e-1f));
      q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(5.0000001201e-1f));
      q = _mm256_fmadd_ps(q, _mm256_mul_ps(r, r), _mm256_add_ps(r, one));
      const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
      _mm256_storeu_ps(a + p, _mm256_div_ps(one, _mm256_fmadd_ps(q, _mm256_castsi256_ps(e), one)));
    }
  }
#endif
  for (; p < n; ++p) a[p] = sigmoid((l[p] - center) * scale + shift);
}

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

// out = x (keep + scale g a): keep = 0, scale = 1 without the blend; with the identity blend
// x + gamma (cbam(x) - x): keep = 1 - gamma, scale = gamma.
template <typename T>
void apply_sample(const T* __restrict__ x, int64_t C, int64_t P, bool cl, const T* __restrict__ g,
                  const T* __restrict__ a, T keep, T scale, T* __restrict__ out) {
  const bool blend = keep != T(0) || scale != T(1);
  if (!cl) {
    for (int64_t c = 0; c < C; ++c) {
      const T gc = g[c], sc = scale * g[c];
      const T* __restrict__ row = x + c * P;
      T* __restrict__ o = out + c * P;
      if (blend) {
        _Pragma("omp simd") for (int64_t p = 0; p < P; ++p) o[p] = row[p] * (keep + sc * a[p]);
      } else {
        _Pragma("omp simd") for (int64_t p = 0; p < P; ++p) o[p] = row[p] * gc * a[p];
      }
    }
  } else {
    for (int64_t p = 0; p < P; ++p) {
      const T ap = a[p], sa = scale * a[p];
      const T* __restrict__ row = x + p * C;
      T* __restrict__ o = out + p * C;
      if (blend) {
        _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) o[c] = row[c] * (keep + sa * g[c]);
      } else {
        _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) o[c] = row[c] * g[c] * ap;
      }
    }
  }
}

template <typename T>
void gates_sample(const T* __restrict__ x, const T* __restrict__ dout, int64_t C, int64_t P, bool cl,
                  const T* __restrict__ g, const T* __restrict__ a, const T* __restrict__ peak,
                  const T* __restrict__ top, T* __restrict__ da, T* __restrict__ dg, T* __restrict__ count,
                  T* __restrict__ count_hw, T* __restrict__ tmp, T* __restrict__ sum_xd) {
  // sum_xd (where asked): the sum of x dout over the sample, for the blend's gamma
  T total = 0;
  if (!cl) {
    std::fill(da, da + P, T(0));
    std::fill(count, count + P, T(0));
    for (int64_t c = 0; c < C; ++c) {
      const T gc = g[c], tc = top[c];
      const T* __restrict__ row = x + c * P;
      const T* __restrict__ drow = dout + c * P;
      T n = 0, t = 0;
      _Pragma("omp simd reduction(+ : n, t)") for (int64_t p = 0; p < P; ++p) {
        const T xd = row[p] * drow[p];
        tmp[p] = xd;
        da[p] += gc * xd;
        count[p] += (gc * row[p] == peak[p]) ? T(1) : T(0);
        n += (row[p] == tc) ? T(1) : T(0);
        t += xd;
      }
      dg[c] = dot(tmp, a, P);
      count_hw[c] = n;
      total += t;
    }
  } else {
    // per-channel sums (the channel gate's gradient, the ties of the H x W max, and x dout in tmp) are
    // accumulated across positions: only the two sums over channels are reduced per position
    std::fill(dg, dg + C, T(0));
    std::fill(count_hw, count_hw + C, T(0));
    std::fill(tmp, tmp + C, T(0));
    for (int64_t p = 0; p < P; ++p) {
      const T* __restrict__ row = x + p * C;
      const T* __restrict__ drow = dout + p * C;
      const T ap = a[p], kp = peak[p];
      T s = 0, n = 0;
      _Pragma("omp simd reduction(+ : s, n)") for (int64_t c = 0; c < C; ++c) {
        const T xd = row[c] * drow[c];
        dg[c] += xd * ap;
        count_hw[c] += (row[c] == top[c]) ? T(1) : T(0);
        tmp[c] += xd;
        s += g[c] * xd;
        n += (g[c] * row[c] == kp) ? T(1) : T(0);
      }
      da[p] = s;
      count[p] = n;
    }
    for (int64_t c = 0; c < C; ++c) total += tmp[c];
  }
  if (sum_xd) *sum_xd = total;
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
                  const T* __restrict__ top, const T* __restrict__ top_share, T keep, T scale,
                  T* __restrict__ dx) {
  // the blend's output gradient reaches the layer scaled by ``scale`` and x directly by ``keep``
  if (!cl) {
    for (int64_t c = 0; c < C; ++c) {
      const T gc = g[c], va = davg[c], tc = top[c], ts = top_share[c];
      const T* __restrict__ row = x + c * P;
      const T* __restrict__ drow = dout + c * P;
      T* __restrict__ o = dx + c * P;
      _Pragma("omp simd") for (int64_t p = 0; p < P; ++p) {
        const T t = scale * drow[p] * a[p] + dmean[p] + ((gc * row[p] == peak[p]) ? share[p] : T(0));
        o[p] = gc * t + va + ((row[p] == tc) ? ts : T(0)) + keep * drow[p];
      }
    }
  } else {
    for (int64_t p = 0; p < P; ++p) {
      const T* __restrict__ row = x + p * C;
      const T* __restrict__ drow = dout + p * C;
      T* __restrict__ o = dx + p * C;
      const T sa = scale * a[p], m = dmean[p], s = share[p], k = peak[p];
      _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) {
        const T t = drow[c] * sa + m + ((g[c] * row[c] == k) ? s : T(0));
        o[c] = g[c] * t + davg[c] + ((row[c] == top[c]) ? top_share[c] : T(0)) + keep * drow[c];
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

// ---------------------------------------------------------------------------------------
// The ops. Two configurations share the per-sample passes above:
//
//   forward / backward        the paper's: a = sigmoid(conv(stats) + bc), one pass per sample and direction.
//   bn_forward / bn_backward  the official code's and timm's: a = sigmoid(BN(conv(stats))), conv without
//                             bias. In training BatchNorm needs the logits of every sample before any gate
//                             can be applied, so each direction runs two passes over the batch with the
//                             batch statistics (forward) or their gradient (backward) in between; in
//                             evaluation (running statistics given) the normalisation is an affine map.
//
// Both take the identity blend's gamma (optional): out = x + gamma (cbam(x) - x).

using Tensors8 = decltype(std::tuple_cat(Tensors4{}, Tensors4{}));
using Tensors9 = decltype(std::tuple_cat(Tensors5{}, Tensors4{}));
using Tensors11 = decltype(std::tuple_cat(Tensors6{}, Tensors5{}));

struct Params {
  at::Tensor w1, b1, w2, b2, wc;  // b1, b2 may be undefined
};

at::Tensor param_or_none(const at::Tensor& p, const at::Tensor& x) {
  if (!p.defined() || !p.numel()) return at::Tensor();
  check_param(p, x, "cbam");
  return p.contiguous();
}

Params params_of(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                 const at::Tensor& b2, const at::Tensor& wc) {
  const int64_t C = x.size(1), R = w1.size(0);
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == C, "cbam: expected fc1.weight of shape (R, ", C, "), got ", w1.sizes());
  TORCH_CHECK(w2.dim() == 2 && w2.size(0) == C && w2.size(1) == R, "cbam: expected fc2.weight of shape (", C, ", ",
              R, "), got ", w2.sizes());
  TORCH_CHECK(wc.dim() == 4 && wc.size(0) == 1 && wc.size(1) == 2 && wc.size(2) == wc.size(3) && wc.size(2) % 2 == 1,
              "cbam: expected a (1, 2, k, k) convolution weight with odd k, got ", wc.sizes());
  Params q{param_or_none(w1, x), param_or_none(b1, x), param_or_none(w2, x), param_or_none(b2, x),
           param_or_none(wc, x)};
  TORCH_CHECK(!q.b1.defined() || q.b1.numel() == R, "cbam: expected fc1.bias of ", R, " elements");
  TORCH_CHECK(!q.b2.defined() || q.b2.numel() == C, "cbam: expected fc2.bias of ", C, " elements");
  return q;
}

// A one-element parameter's value (``fallback`` where absent).
template <typename T>
T scalar_of(const at::Tensor& p, const at::Tensor& x, const char* what, T fallback) {
  if (!p.defined()) return fallback;
  TORCH_CHECK(p.numel() == 1, "cbam: expected a one-element ", what, ", got ", p.sizes());
  check_param(p, x, "cbam");
  return p.to(at::kDouble).item<double>();
}

// Shapes and raw parameters of one call, and the per-sample steps the ops are made of.
template <typename T>
struct Layer {
  int64_t B, C, H, W, P, R;
  bool cl;
  PaddedShape d;
  const T *w1, *b1, *w2, *b2, *wc;

  Layer(const at::Tensor& x, const Params& q)
      : B(x.size(0)), C(x.size(1)), H(x.size(2)), W(x.size(3)), P(x.size(2) * x.size(3)), R(q.w1.size(0)),
        cl(is_channels_last(x)), d(x.size(2), x.size(3), q.wc.size(2)), w1(q.w1.const_data_ptr<T>()),
        b1(q.b1.defined() ? q.b1.const_data_ptr<T>() : nullptr), w2(q.w2.const_data_ptr<T>()),
        b2(q.b2.defined() ? q.b2.const_data_ptr<T>() : nullptr), wc(q.wc.const_data_ptr<T>()) {}

  // Per-thread scratch of the forward.
  struct Scratch {
    std::vector<T> hsum, pad, wide;
    explicit Scratch(const Layer& l) : hsum(l.R), pad(2 * l.d.plane()), wide(l.d.Q) {}
  };

  // Sample b up to the convolution: pooled (2C), hidden (2R), g (C), stats (2P) and logits (P, no bias).
  void front(const T* xb, T* pb, T* hb, T* gb, T* sb, T* lb, Scratch& s) const {
    hw_pool_sample(xb, C, P, cl, pb, pb + C);
    mlp_forward(w1, b1, w2, b2, C, R, pb, 2, hb, s.hsum.data(), gb);
    channel_pool_sample(xb, C, P, cl, gb, sb, sb + P);
    conv_forward(sb, wc, d, s.pad.data(), s.wide.data(), lb);
  }

  // Per-thread scratch of the backward.
  struct BackScratch {
    std::vector<T> tmp, dstats, dmean, share, dg2, hsum, ds, dpool, pad, wide, dpad;
    explicit BackScratch(const Layer& l)
        : tmp(std::max(l.P, l.C)), dstats(2 * l.P), dmean(l.P), share(l.P), dg2(l.C), hsum(l.R), ds(l.R),
          dpool(2 * l.C), pad(2 * l.d.plane()), wide(l.d.Q + 2 * l.d.k), dpad(2 * l.d.plane()) {}
  };

  // Sample b from the logits' gradient dl (P) and the channel gate's gradient so far dg (C, overwritten):
  // accumulates the parameter gradients (gw1, gb1, gw2, gb2, gwc) and writes dx when asked.
  void back(const T* xb, const T* db, const T* gb, const T* ab, const T* pb, const T* hb, const T* sb, const T* dl,
            const T* count, const T* count_hw, T* dg, T keep, T scale, T* gw1, T* gb1, T* gw2, T* gb2, T* gwc,
            T* dxb, BackScratch& s) const {
    const T* peak = sb + P;
    pad_maps(sb, d, s.pad.data());
    conv_backward(dl, wc, d, s.pad.data(), s.wide.data(), s.dpad.data(), s.dstats.data(), gwc);
    for (int64_t p = 0; p < P; ++p) {
      s.dmean[p] = s.dstats[p] / C;
      s.share[p] = s.dstats[P + p] / count[p];
    }
    mask_sample(xb, C, P, cl, gb, peak, s.dmean.data(), s.share.data(), s.dg2.data(), s.tmp.data());
    for (int64_t c = 0; c < C; ++c) dg[c] += s.dg2[c];
    mlp_backward(w1, w2, C, R, pb, 2, hb, gb, dg, s.hsum.data(), s.ds.data(), gw1, gb1, gw2, gb2, s.dpool.data());
    if (dxb) {
      T* dpool = s.dpool.data();
      for (int64_t c = 0; c < C; ++c) {
        dpool[c] /= P;                  // avg over H x W
        dpool[C + c] /= count_hw[c];    // max over H x W: shared by the tied positions
      }
      input_sample(xb, db, C, P, cl, gb, ab, peak, s.dmean.data(), s.share.data(), dpool, pb + C, dpool + C, keep,
                   scale, dxb);
    }
  }
};

// The gradient sums of the backward, flat: fc1.weight, fc1.bias, fc2.weight, fc2.bias, conv.weight, then
// ``extra`` scalars.
struct GradLayout {
  int64_t b1, w2, b2, wc, extra, size;
  GradLayout(int64_t C, int64_t R, int64_t k, int64_t n_extra)
      : b1(R * C), w2(b1 + R), b2(w2 + C * R), wc(b2 + C), extra(wc + 2 * k * k), size(extra + n_extra) {}
};

// What both backward ops share: the output gradient in x's memory format, the forward's saved tensors flat
// per sample, and the gradients of the MLP and of the convolution's weight (dx empty unless asked for).
struct BackwardIO {
  at::Tensor dout, g, a, pooled, hidden, stats, dx, dw1, db1, dw2, db2, dwc;

  BackwardIO(const at::Tensor& x, const at::Tensor& dout_, const Params& q, const at::Tensor& g_,
             const at::Tensor& a_, const at::Tensor& pooled_, const at::Tensor& hidden_, const at::Tensor& stats_,
             bool need_dx) {
    const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3), R = q.w1.size(0), k = q.wc.size(2);
    const auto opt = x.options();
    dout = like_x(dout_, x, is_channels_last(x));
    g = flat(g_, B, C, x), a = flat(a_, B, P, x), pooled = flat(pooled_, B, 2 * C, x);
    hidden = flat(hidden_, B, 2 * R, x), stats = flat(stats_, B, 2 * P, x);
    dx = need_dx ? at::empty_like(x) : at::empty({0}, opt);
    dw1 = at::empty({R, C}, opt), db1 = at::empty({R}, opt), dw2 = at::empty({C, R}, opt), db2 = at::empty({C}, opt);
    dwc = at::empty({1, 2, k, k}, opt);
  }

  // Copies those gradients out of the batch's sums (laid out as GradLayout says).
  template <typename T>
  void write(const std::vector<T>& total, const GradLayout& o) const {
    copy_into(dw1, total.data(), dw1.numel());
    copy_into(db1, total.data() + o.b1, db1.numel());
    copy_into(dw2, total.data() + o.w2, dw2.numel());
    copy_into(db2, total.data() + o.b2, db2.numel());
    copy_into(dwc, total.data() + o.wc, dwc.numel());
  }
};

// Blend coefficients: out = x (keep + scale g a).
template <typename T>
std::pair<T, T> blend_of(const at::Tensor& gamma, const at::Tensor& x) {
  const T gam = scalar_of<T>(gamma, x, "gamma", T(1));
  return {gamma.defined() ? T(1) - gam : T(0), gam};
}

// Returns out, g (B, C), a (B, 1, H, W), and for the backward: pooled (B, 2, C: avg, top), hidden (B, 2, R),
// stats (B, 2, H, W: mean, peak).
Tensors6 cbam_forward(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                      const at::Tensor& b2, const at::Tensor& wc, const at::Tensor& bc, const at::Tensor& gamma) {
  check_input(x, "cbam_forward");
  const Params q = params_of(x, w1, b1, w2, b2, wc);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), R = q.w1.size(0);
  auto opt = x.options();
  auto out = at::empty_like(x);
  auto g = at::empty({B, C}, opt), a = at::empty({B, 1, H, W}, opt), pooled = at::empty({B, 2, C}, opt);
  auto hidden = at::empty({B, 2, R}, opt), stats = at::empty({B, 2, H, W}, opt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_forward", [&] {
    using T = scalar_t;
    const Layer<T> l(x, q);
    const T bias_c = scalar_of<T>(bc, x, "convolution bias", T(0));
    const std::pair<T, T> blend = blend_of<T>(gamma, x);
    const T keep = blend.first, scale = blend.second;
    const T* xp = x.const_data_ptr<T>();
    const int64_t P = l.P;
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1_) {
      typename Layer<T>::Scratch s(l);
      for (int64_t b = b0; b < b1_; ++b) {
        const T* xb = xp + b * C * P;
        T* ab = a.data_ptr<T>() + b * P;
        T* gb = g.data_ptr<T>() + b * C;
        l.front(xb, pooled.data_ptr<T>() + b * 2 * C, hidden.data_ptr<T>() + b * 2 * R, gb,
                stats.data_ptr<T>() + b * 2 * P, ab, s);
        sigmoid_map(ab, P, T(0), T(1), bias_c, ab);
        apply_sample(xb, C, P, l.cl, gb, ab, keep, scale, out.data_ptr<T>() + b * C * P);
      }
    });
  });
  return {out, g, a, pooled, hidden, stats};
}

// Returns dx, d fc1.weight, d fc1.bias, d fc2.weight, d fc2.bias, d conv.weight, d conv.bias, d gamma; those not
// computed (dx unless need_dx, absent biases, gamma) are empty (0 elements).
Tensors8 cbam_backward(const at::Tensor& x, const at::Tensor& dout_, const at::Tensor& w1, const at::Tensor& b1,
                       const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& wc, const at::Tensor& bc,
                       const at::Tensor& gamma, const at::Tensor& g_, const at::Tensor& a_,
                       const at::Tensor& pooled_, const at::Tensor& hidden_, const at::Tensor& stats_, bool need_dx) {
  check_input(x, "cbam_backward");
  const Params q = params_of(x, w1, b1, w2, b2, wc);
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3), R = q.w1.size(0), k = q.wc.size(2);
  const bool cl = is_channels_last(x);
  const BackwardIO io(x, dout_, q, g_, a_, pooled_, hidden_, stats_, need_dx);
  const at::Tensor &dout = io.dout, &g = io.g, &a = io.a, &pooled = io.pooled, &hidden = io.hidden, &stats = io.stats;
  auto opt = x.options();
  auto dbc = at::empty({1}, opt);
  auto dgamma = gamma.defined() ? at::empty_like(gamma) : at::empty({0}, opt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_backward", [&] {
    using T = scalar_t;
    const Layer<T> l(x, q);
    const std::pair<T, T> blend = blend_of<T>(gamma, x);
    const T keep = blend.first, scale = blend.second;
    const T* xp = x.const_data_ptr<T>();
    const T* dp = dout.const_data_ptr<T>();
    const GradLayout o(C, R, k, 2);  // extra: conv.bias, gamma
    ChunkSums<T> sums(o.size);
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1_) {
      T* part = sums.open(b0);
      typename Layer<T>::BackScratch s(l);
      std::vector<T> da(P), count(P), dg(C), count_hw(C);
      for (int64_t b = b0; b < b1_; ++b) {
        const T* xb = xp + b * C * P;
        const T* db = dp + b * C * P;
        const T* gb = g.const_data_ptr<T>() + b * C;
        const T* ab = a.const_data_ptr<T>() + b * P;
        const T* pb = pooled.const_data_ptr<T>() + b * 2 * C;
        const T* sb = stats.const_data_ptr<T>() + b * 2 * P;
        T sum_xd = 0;
        gates_sample(xb, db, C, P, cl, gb, ab, sb + P, pb + C, da.data(), dg.data(), count.data(), count_hw.data(),
                     s.tmp.data(), gamma.defined() ? &sum_xd : nullptr);
        if (gamma.defined()) {  // d gamma = sum dout (x g a - x); the layer's gradients are scaled by gamma
          part[o.extra + 1] += dot(ab, da.data(), P) - sum_xd;
          for (int64_t p = 0; p < P; ++p) da[p] *= scale;
          for (int64_t c = 0; c < C; ++c) dg[c] *= scale;
        }
        T gbc = 0;  // spatial gate: through the sigmoid and the bias
        for (int64_t p = 0; p < P; ++p) {
          da[p] *= ab[p] * (T(1) - ab[p]);
          gbc += da[p];
        }
        part[o.extra] += gbc;
        l.back(xb, db, gb, ab, pb, hidden.const_data_ptr<T>() + b * 2 * R, sb, da.data(), count.data(),
               count_hw.data(), dg.data(), keep, scale, part, part + o.b1, part + o.w2, part + o.b2, part + o.wc,
               need_dx ? io.dx.data_ptr<T>() + b * C * P : nullptr, s);
      }
    });
    const std::vector<T> total = sums.total();
    io.write(total, o);
    copy_into(dbc, total.data() + o.extra, 1);
    if (gamma.defined()) copy_into(dgamma, total.data() + o.extra + 1, 1);
  });
  auto none = [&] { return at::empty({0}, opt); };  // a new one per absent gradient: outputs never alias
  return {io.dx, io.dw1, q.b1.defined() ? io.db1 : none(), io.dw2, q.b2.defined() ? io.db2 : none(), io.dwc, dbc, dgamma};
}

// The normalisation of the logits: z = (l - mean) inv w + bias, inv = 1 / sqrt(var + eps), from the running
// statistics where given, else from the batch's (biased variance, as BatchNorm normalises in training).
template <typename T>
struct Norm {
  double mean, var, inv;
  T w, bias;
};

template <typename T>
Norm<T> norm_of(const at::Tensor& logits, const at::Tensor& bn_w, const at::Tensor& bn_b, const at::Tensor& rm,
                const at::Tensor& rv, double eps, const at::Tensor& x) {
  Norm<T> n{};
  if (rm.defined()) {
    TORCH_CHECK(rv.defined(), "cbam: expected running_var with running_mean");
    n.mean = scalar_of<double>(rm, x, "running mean", 0.0);
    n.var = scalar_of<double>(rv, x, "running variance", 1.0);
  } else {
    const T* l = logits.const_data_ptr<T>();
    const int64_t N = logits.numel();
    TORCH_CHECK(N > 1, "cbam: BatchNorm in training expects more than 1 value per channel, got ", N);
    double s = 0;
    for (int64_t i = 0; i < N; ++i) s += l[i];
    n.mean = s / N;
    double v = 0;
    for (int64_t i = 0; i < N; ++i) v += (l[i] - n.mean) * (l[i] - n.mean);
    n.var = v / N;
  }
  n.inv = 1.0 / std::sqrt(n.var + eps);
  n.w = scalar_of<T>(bn_w, x, "BatchNorm weight", T(1));
  n.bias = scalar_of<T>(bn_b, x, "BatchNorm bias", T(0));
  return n;
}

// Returns out, g, a, pooled, hidden, stats (as ``forward``), and the logits (B, 1, H, W) with the mean and
// variance (1) they were normalised with.
Tensors9 cbam_bn_forward(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                         const at::Tensor& b2, const at::Tensor& wc, const at::Tensor& bn_w, const at::Tensor& bn_b,
                         const at::Tensor& rm, const at::Tensor& rv, const at::Tensor& gamma, double eps) {
  check_input(x, "cbam_bn_forward");
  const Params q = params_of(x, w1, b1, w2, b2, wc);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), R = q.w1.size(0);
  auto opt = x.options();
  auto out = at::empty_like(x);
  auto g = at::empty({B, C}, opt), a = at::empty({B, 1, H, W}, opt), pooled = at::empty({B, 2, C}, opt);
  auto hidden = at::empty({B, 2, R}, opt), stats = at::empty({B, 2, H, W}, opt);
  auto logits = at::empty({B, 1, H, W}, opt), mean = at::empty({1}, opt), var = at::empty({1}, opt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_bn_forward", [&] {
    using T = scalar_t;
    const Layer<T> l(x, q);
    const std::pair<T, T> blend = blend_of<T>(gamma, x);
    const T keep = blend.first, scale = blend.second;
    const T* xp = x.const_data_ptr<T>();
    const int64_t P = l.P;
    auto gate_and_apply = [&](int64_t b, const Norm<T>& n) {
      const T* lb = logits.const_data_ptr<T>() + b * P;
      T* ab = a.data_ptr<T>() + b * P;
      sigmoid_map(lb, P, T(n.mean), T(n.inv * n.w), n.bias, ab);
      apply_sample(xp + b * C * P, C, P, l.cl, g.const_data_ptr<T>() + b * C, ab, keep, scale,
                   out.data_ptr<T>() + b * C * P);
    };
    auto front = [&](int64_t b, typename Layer<T>::Scratch& s) {
      l.front(xp + b * C * P, pooled.data_ptr<T>() + b * 2 * C, hidden.data_ptr<T>() + b * 2 * R,
              g.data_ptr<T>() + b * C, stats.data_ptr<T>() + b * 2 * P, logits.data_ptr<T>() + b * P, s);
    };
    Norm<T> n{};
    if (rm.defined()) {  // running statistics: each sample in one go, read from memory once
      n = norm_of<T>(logits, bn_w, bn_b, rm, rv, eps, x);
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1_) {
        typename Layer<T>::Scratch s(l);
        for (int64_t b = b0; b < b1_; ++b) {
          front(b, s);
          gate_and_apply(b, n);
        }
      });
    } else {  // batch statistics: every sample's logits first
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1_) {
        typename Layer<T>::Scratch s(l);
        for (int64_t b = b0; b < b1_; ++b) front(b, s);
      });
      n = norm_of<T>(logits, bn_w, bn_b, rm, rv, eps, x);
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1_) {
        for (int64_t b = b0; b < b1_; ++b) gate_and_apply(b, n);
      });
    }
    mean.fill_(n.mean);
    var.fill_(n.var);
  });
  return {out, g, a, pooled, hidden, stats, logits, mean, var};
}

// Returns dx, d fc1.weight, d fc1.bias, d fc2.weight, d fc2.bias, d conv.weight, d BatchNorm weight, d BatchNorm
// bias, (empty) for the running statistics, d gamma; those not computed are empty (0 elements).
Tensors11 cbam_bn_backward(const at::Tensor& x, const at::Tensor& dout_, const at::Tensor& w1, const at::Tensor& b1,
                           const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& wc, const at::Tensor& bn_w,
                           const at::Tensor& bn_b, const at::Tensor& rm, const at::Tensor& rv,
                           const at::Tensor& gamma, const at::Tensor& g_, const at::Tensor& a_,
                           const at::Tensor& pooled_, const at::Tensor& hidden_, const at::Tensor& stats_,
                           const at::Tensor& logits_, const at::Tensor& mean, const at::Tensor& var, double eps,
                           bool need_dx) {
  check_input(x, "cbam_bn_backward");
  const Params q = params_of(x, w1, b1, w2, b2, wc);
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3), R = q.w1.size(0), k = q.wc.size(2);
  const bool cl = is_channels_last(x);
  const BackwardIO io(x, dout_, q, g_, a_, pooled_, hidden_, stats_, need_dx);
  const at::Tensor &dout = io.dout, &g = io.g, &a = io.a, &pooled = io.pooled, &hidden = io.hidden, &stats = io.stats;
  auto logits = flat(logits_, B, P, x);
  auto opt = x.options();
  auto dbn_w = bn_w.defined() ? at::empty_like(bn_w) : at::empty({0}, opt);
  auto dbn_b = bn_b.defined() ? at::empty_like(bn_b) : at::empty({0}, opt);
  auto dgamma = gamma.defined() ? at::empty_like(gamma) : at::empty({0}, opt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_bn_backward", [&] {
    using T = scalar_t;
    const Layer<T> l(x, q);
    const std::pair<T, T> blend = blend_of<T>(gamma, x);
    const T keep = blend.first, scale = blend.second;
    const T* xp = x.const_data_ptr<T>();
    const T* dp = dout.const_data_ptr<T>();
    const double mu = scalar_of<double>(mean, x, "mean", 0.0);
    const double inv = 1.0 / std::sqrt(scalar_of<double>(var, x, "variance", 1.0) + eps);
    const T bw = scalar_of<T>(bn_w, x, "BatchNorm weight", T(1));
    // pass 1: the gates' gradients of every sample (dz: the normalised logits')
    std::vector<T> dz(B * P), dg(B * C), count(B * P), count_hw(B * C), dgam(B, T(0));
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1_) {
      std::vector<T> tmp(std::max(P, C));
      for (int64_t b = b0; b < b1_; ++b) {
        const T* ab = a.const_data_ptr<T>() + b * P;
        T* da = dz.data() + b * P;
        T* dgb = dg.data() + b * C;
        T sum_xd = 0;
        gates_sample(xp + b * C * P, dp + b * C * P, C, P, cl, g.const_data_ptr<T>() + b * C, ab,
                     stats.const_data_ptr<T>() + b * 2 * P + P, pooled.const_data_ptr<T>() + b * 2 * C + C, da, dgb,
                     count.data() + b * P, count_hw.data() + b * C, tmp.data(), gamma.defined() ? &sum_xd : nullptr);
        if (gamma.defined()) {
          dgam[b] = dot(ab, da, P) - sum_xd;
          for (int64_t c = 0; c < C; ++c) dgb[c] *= scale;
        }
        for (int64_t p = 0; p < P; ++p) da[p] *= scale * ab[p] * (T(1) - ab[p]);
      }
    });
    // BatchNorm: dw = sum dz y, dbias = sum dz, y = (l - mean) inv; with batch statistics
    // dl = inv w (dz - dbias / N - y dw / N), with running statistics dl = inv w dz
    const T* lp = logits.const_data_ptr<T>();
    const int64_t N = B * P;
    double sum_dz = 0, sum_dzy = 0;
    for (int64_t i = 0; i < N; ++i) {
      sum_dz += dz[i];
      sum_dzy += dz[i] * ((lp[i] - mu) * inv);
    }
    const bool batch_stats = !rm.defined();
    for (int64_t i = 0; i < N; ++i) {
      const double y = (lp[i] - mu) * inv;
      dz[i] = batch_stats ? inv * bw * (dz[i] - sum_dz / N - y * sum_dzy / N) : inv * bw * dz[i];
    }
    // pass 2: the rest of each sample's backward from its logits' gradient
    const GradLayout o(C, R, k, 0);
    ChunkSums<T> sums(o.size);
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1_) {
      T* part = sums.open(b0);
      typename Layer<T>::BackScratch s(l);
      for (int64_t b = b0; b < b1_; ++b)
        l.back(xp + b * C * P, dp + b * C * P, g.const_data_ptr<T>() + b * C, a.const_data_ptr<T>() + b * P,
               pooled.const_data_ptr<T>() + b * 2 * C, hidden.const_data_ptr<T>() + b * 2 * R,
               stats.const_data_ptr<T>() + b * 2 * P, dz.data() + b * P, count.data() + b * P,
               count_hw.data() + b * C, dg.data() + b * C, keep, scale, part, part + o.b1, part + o.w2, part + o.b2,
               part + o.wc, need_dx ? io.dx.data_ptr<T>() + b * C * P : nullptr, s);
    });
    io.write(sums.total(), o);
    if (bn_w.defined()) dbn_w.fill_(sum_dzy);
    if (bn_b.defined()) dbn_b.fill_(sum_dz);
    T dgamma_sum = 0;
    for (int64_t b = 0; b < B; ++b) dgamma_sum += dgam[b];
    if (gamma.defined()) dgamma.fill_(dgamma_sum);
  });
  auto none = [&] { return at::empty({0}, opt); };  // a new one per absent gradient: outputs never alias
  return {io.dx, io.dw1, q.b1.defined() ? io.db1 : none(), io.dw2, q.b2.defined() ? io.db2 : none(), io.dwc, dbn_w,
          dbn_b, none(), none(), dgamma};
}

at::Tensor opt_or_none(const std::optional<at::Tensor>& t) { return t.value_or(at::Tensor()); }

}  // namespace

// gamma (the identity blend's) comes last with a default, so that calls without the blend keep their form.
TORCH_LIBRARY(convattn_cbam, m) {
  m.def(
      "forward(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor wc, Tensor bc, Tensor? gamma=None) -> "
      "(Tensor out, Tensor g, Tensor a, Tensor pooled, Tensor hidden, Tensor stats)");
  m.def(
      "backward(Tensor x, Tensor dout, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor wc, Tensor bc, "
      "Tensor g, Tensor a, Tensor pooled, Tensor hidden, Tensor stats, bool need_dx, Tensor? gamma=None) -> "
      "(Tensor dx, Tensor dw1, Tensor db1, Tensor dw2, Tensor db2, Tensor dwc, Tensor dbc, Tensor dgamma)");
  m.def(
      "bn_forward(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor wc, Tensor? bn_w, Tensor? bn_b, "
      "Tensor? running_mean, Tensor? running_var, float eps, Tensor? gamma=None) -> "
      "(Tensor out, Tensor g, Tensor a, Tensor pooled, Tensor hidden, Tensor stats, Tensor logits, Tensor mean, "
      "Tensor var)");
  m.def(
      "bn_backward(Tensor x, Tensor dout, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor wc, Tensor? bn_w, "
      "Tensor? bn_b, Tensor? running_mean, Tensor? running_var, Tensor g, Tensor a, Tensor pooled, Tensor hidden, "
      "Tensor stats, Tensor logits, Tensor mean, Tensor var, float eps, bool need_dx, Tensor? gamma=None) -> "
      "(Tensor dx, Tensor dw1, Tensor db1, Tensor dw2, Tensor db2, Tensor dwc, Tensor dbn_w, Tensor dbn_b, "
      "Tensor drunning_mean, Tensor drunning_var, Tensor dgamma)");
}

TORCH_LIBRARY_IMPL(convattn_cbam, CPU, m) {
  using OT = std::optional<at::Tensor>;
  using T_ = at::Tensor;
  m.impl("forward", [](const T_& x, const T_& w1, const OT& b1, const T_& w2, const OT& b2, const T_& wc,
                       const T_& bc, const OT& gamma) {
    return cbam_forward(x, w1, opt_or_none(b1), w2, opt_or_none(b2), wc, bc, opt_or_none(gamma));
  });
  m.impl("backward", [](const T_& x, const T_& dout, const T_& w1, const OT& b1, const T_& w2, const OT& b2,
                        const T_& wc, const T_& bc, const T_& g, const T_& a, const T_& pooled, const T_& hidden,
                        const T_& stats, bool need_dx, const OT& gamma) {
    return cbam_backward(x, dout, w1, opt_or_none(b1), w2, opt_or_none(b2), wc, bc, opt_or_none(gamma), g, a, pooled,
                         hidden, stats, need_dx);
  });
  m.impl("bn_forward", [](const T_& x, const T_& w1, const OT& b1, const T_& w2, const OT& b2, const T_& wc,
                          const OT& bn_w, const OT& bn_b, const OT& rm, const OT& rv, double eps, const OT& gamma) {
    return cbam_bn_forward(x, w1, opt_or_none(b1), w2, opt_or_none(b2), wc, opt_or_none(bn_w), opt_or_none(bn_b),
                           opt_or_none(rm), opt_or_none(rv), opt_or_none(gamma), eps);
  });
  m.impl("bn_backward", [](const T_& x, const T_& dout, const T_& w1, const OT& b1, const T_& w2, const OT& b2,
                           const T_& wc, const OT& bn_w, const OT& bn_b, const OT& rm, const OT& rv, const T_& g,
                           const T_& a, const T_& pooled, const T_& hidden, const T_& stats, const T_& logits,
                           const T_& mean, const T_& var, double eps, bool need_dx, const OT& gamma) {
    return cbam_bn_backward(x, dout, w1, opt_or_none(b1), w2, opt_or_none(b2), wc, opt_or_none(bn_w),
                            opt_or_none(bn_b), opt_or_none(rm), opt_or_none(rv), opt_or_none(gamma), g, a, pooled,
                            hidden, stats, logits, mean, var, eps, need_dx);
  });
}
