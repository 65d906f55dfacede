// Fused CPU passes for CBAM (channel-first order): each full-size pass reads the
// input once, where the op-by-op formulation reads it several times.
//
// Notation: x (B, C, P) with P = H*W, stored NCHW (x[b][c][p]) or channels-last
// (x[b][p][c]); g (B, C) the channel gate; a (B, P) the spatial gate.
//
//   cbam_hw_pool(x, with_index)       -> avg_p x, max_p x (B, C) [, first arg-max (B, C)]
//   cbam_channel_pool(x, g)           -> stats (B, 2, H, W): mean_c(g x), max_c(g x)
//   cbam_apply(x, g, a)               -> out = x g a, in the memory format of x
//   cbam_backward_gates(x, dout, g, a, peak)
//                                     -> da (B, P) = sum_c g x dout,
//                                        dg (B, C) = sum_p x dout a,
//                                        count (B, P) = #{c : g x = peak}
//   cbam_backward_mask(x, g, peak, dmean, share)
//                                     -> (B, C) sum_p x (dmean + [g x = peak] share)
//   cbam_backward_input(x, dout, g, a, peak, dmean, share, davg, dpeak, index)
//                                     -> dx = g (dout a + dmean + [g x = peak] share)
//                                             + davg, plus dpeak at the arg-max of each (b, c)
//
// Built with -fopenmp-simd: the ``omp simd`` loops (reductions included) are
// vectorised without -ffast-math and without an OpenMP runtime.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace {

bool is_channels_last(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
}

void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4, name, ": expected a 4-D (B, C, H, W) tensor, got ", x.dim(), "-D");
  TORCH_CHECK(x.device().is_cpu(), name, ": expected a CPU tensor, got ", x.device());
  TORCH_CHECK(x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast), name,
              ": expected contiguous or channels-last storage");
}

// The (B, n) companion tensors, contiguous, in x's dtype.
at::Tensor flat(const at::Tensor& t, int64_t b, int64_t n, const at::Tensor& x) {
  TORCH_CHECK(t.numel() == b * n, "expected ", b * n, " elements, got ", t.numel());
  return t.reshape({b, n}).to(x.scalar_type()).contiguous();
}

// Sum and max of a contiguous run; with ``arg``, also the first position of the max
// (as torch.max(dim) reports on CPU).
template <typename T>
void sum_max(const T* __restrict__ v, int64_t n, T& sum, T& mx, int64_t* arg) {
  T s = 0, m = -std::numeric_limits<T>::infinity();
  _Pragma("omp simd reduction(+ : s) reduction(max : m)")
  for (int64_t i = 0; i < n; ++i) {
    s += v[i];
    m = v[i] > m ? v[i] : m;
  }
  sum = s;
  mx = m;
  if (arg) {  // the first block of 16 holding the max, then the position inside it
    constexpr int64_t W = 16;
    int64_t i = 0;
    for (; i + W <= n; i += W) {
      int hit = 0;
      _Pragma("omp simd reduction(| : hit)")
      for (int64_t j = 0; j < W; ++j) hit |= v[i + j] == m;
      if (hit) break;
    }
    while (i < n - 1 && !(v[i] == m)) ++i;
    *arg = i;
  }
}

// sum_i g_i v_i and max_i g_i v_i over a contiguous run.
template <typename T>
void gated_sum_max(const T* __restrict__ v, const T* __restrict__ g, int64_t n, T& sum, T& mx) {
  T s = 0, m = -std::numeric_limits<T>::infinity();
  _Pragma("omp simd reduction(+ : s) reduction(max : m)")
  for (int64_t i = 0; i < n; ++i) {
    const T u = g[i] * v[i];
    s += u;
    m = u > m ? u : m;
  }
  sum = s;
  mx = m;
}

template <typename T>
T dot(const T* __restrict__ u, const T* __restrict__ v, int64_t n) {
  T s = 0;
  _Pragma("omp simd reduction(+ : s)")
  for (int64_t i = 0; i < n; ++i) s += u[i] * v[i];
  return s;
}

std::vector<at::Tensor> cbam_hw_pool(const at::Tensor& x, bool with_index) {
  check_input(x, "cbam_hw_pool");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const bool cl = is_channels_last(x);
  auto avg = at::empty({B, C}, x.options());
  auto mx = at::empty({B, C}, x.options());
  auto idx = at::empty({with_index ? B : 0, C}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_hw_pool", [&] {
    const scalar_t* __restrict__ xp = x.const_data_ptr<scalar_t>();
    scalar_t* __restrict__ ap = avg.data_ptr<scalar_t>();
    scalar_t* __restrict__ mp = mx.data_ptr<scalar_t>();
    int64_t* __restrict__ ip = with_index ? idx.data_ptr<int64_t>() : nullptr;
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        if (!cl) {
          _Pragma("omp simd")
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t* __restrict__ row = xp + (b * C + c) * P;
            scalar_t s, m;
            sum_max(row, P, s, m, ip ? ip + b * C + c : nullptr);
            ap[b * C + c] = s / P;
            mp[b * C + c] = m;
          }
        } else {
          scalar_t* __restrict__ s = ap + b * C;
          scalar_t* __restrict__ m = mp + b * C;
          int64_t* __restrict__ k = ip ? ip + b * C : nullptr;
          std::fill(s, s + C, scalar_t(0));
          std::fill(m, m + C, -std::numeric_limits<scalar_t>::infinity());
          if (k) std::fill(k, k + C, int64_t(0));
          _Pragma("omp simd")
          for (int64_t p = 0; p < P; ++p) {
            const scalar_t* __restrict__ row = xp + (b * P + p) * C;
            _Pragma("omp simd")
            for (int64_t c = 0; c < C; ++c) s[c] += row[c];
            if (k) {
              _Pragma("omp simd")
              for (int64_t c = 0; c < C; ++c) {
                bool gt = row[c] > m[c];
                k[c] = gt ? p : k[c];
                m[c] = gt ? row[c] : m[c];
              }
            } else {
              _Pragma("omp simd")
              for (int64_t c = 0; c < C; ++c) m[c] = row[c] > m[c] ? row[c] : m[c];
            }
          }
          _Pragma("omp simd")
          for (int64_t c = 0; c < C; ++c) s[c] /= P;
        }
      }
    });
  });
  return {avg, mx, idx};
}

at::Tensor cbam_channel_pool(const at::Tensor& x, const at::Tensor& g_) {
  check_input(x, "cbam_channel_pool");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), P = H * W;
  const bool cl = is_channels_last(x);
  auto g = flat(g_, B, C, x);
  auto stats = at::empty({B, 2, H, W}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_channel_pool", [&] {
    const scalar_t* __restrict__ xp = x.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ gp = g.const_data_ptr<scalar_t>();
    scalar_t* __restrict__ sp = stats.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        scalar_t* __restrict__ mean = sp + b * 2 * P;
        scalar_t* __restrict__ peak = mean + P;
        const scalar_t* __restrict__ gb = gp + b * C;
        if (!cl) {
          std::fill(mean, mean + P, scalar_t(0));
          std::fill(peak, peak + P, -std::numeric_limits<scalar_t>::infinity());
          _Pragma("omp simd")
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t* __restrict__ row = xp + (b * C + c) * P;
            const scalar_t gc = gb[c];
            _Pragma("omp simd")
            for (int64_t p = 0; p < P; ++p) {
              scalar_t u = gc * row[p];
              mean[p] += u;
              peak[p] = u > peak[p] ? u : peak[p];
            }
          }
          _Pragma("omp simd")
          for (int64_t p = 0; p < P; ++p) mean[p] /= C;
        } else {
          _Pragma("omp simd")
          for (int64_t p = 0; p < P; ++p) {
            scalar_t s, m;
            gated_sum_max(xp + (b * P + p) * C, gb, C, s, m);
            mean[p] = s / C;
            peak[p] = m;
          }
        }
      }
    });
  });
  return stats;
}

at::Tensor cbam_apply(const at::Tensor& x, const at::Tensor& g_, const at::Tensor& a_) {
  check_input(x, "cbam_apply");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const bool cl = is_channels_last(x);
  auto g = flat(g_, B, C, x);
  auto a = flat(a_, B, P, x);
  auto out = at::empty_like(x);  // keeps x's memory format
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_apply", [&] {
    const scalar_t* __restrict__ xp = x.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ gp = g.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ ap = a.const_data_ptr<scalar_t>();
    scalar_t* __restrict__ op = out.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* __restrict__ gb = gp + b * C;
        const scalar_t* __restrict__ ab = ap + b * P;
        if (!cl) {
          _Pragma("omp simd")
          for (int64_t c = 0; c < C; ++c) {
            const int64_t o = (b * C + c) * P;
            const scalar_t gc = gb[c];
            _Pragma("omp simd")
            for (int64_t p = 0; p < P; ++p) op[o + p] = xp[o + p] * gc * ab[p];
          }
        } else {
          _Pragma("omp simd")
          for (int64_t p = 0; p < P; ++p) {
            const int64_t o = (b * P + p) * C;
            const scalar_t ap_ = ab[p];
            _Pragma("omp simd")
            for (int64_t c = 0; c < C; ++c) op[o + c] = xp[o + c] * gb[c] * ap_;
          }
        }
      }
    });
  });
  return out;
}

std::vector<at::Tensor> cbam_backward_gates(const at::Tensor& x, const at::Tensor& dout_, const at::Tensor& g_,
                                            const at::Tensor& a_, const at::Tensor& peak_) {
  check_input(x, "cbam_backward_gates");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const bool cl = is_channels_last(x);
  auto dout = dout_.contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous).to(x.scalar_type());
  auto g = flat(g_, B, C, x);
  auto a = flat(a_, B, P, x);
  auto peak = flat(peak_, B, P, x);
  auto da = at::empty({B, P}, x.options());
  auto dg = at::empty({B, C}, x.options());
  auto count = at::empty({B, P}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_backward_gates", [&] {
    const scalar_t* __restrict__ xp = x.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ dp = dout.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ gp = g.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ ap = a.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ kp = peak.const_data_ptr<scalar_t>();
    scalar_t* __restrict__ dap = da.data_ptr<scalar_t>();
    scalar_t* __restrict__ dgp = dg.data_ptr<scalar_t>();
    scalar_t* __restrict__ cp = count.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> tmp(std::max(P, C));
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* __restrict__ gb = gp + b * C;
        const scalar_t* __restrict__ ab = ap + b * P;
        const scalar_t* __restrict__ kb = kp + b * P;
        scalar_t* __restrict__ dab = dap + b * P;
        scalar_t* __restrict__ dgb = dgp + b * C;
        scalar_t* __restrict__ cb = cp + b * P;
        std::fill(dab, dab + P, scalar_t(0));
        std::fill(cb, cb + P, scalar_t(0));
        if (!cl) {
          scalar_t* __restrict__ v = tmp.data();
          _Pragma("omp simd")
          for (int64_t c = 0; c < C; ++c) {
            const int64_t o = (b * C + c) * P;
            const scalar_t gc = gb[c];
            _Pragma("omp simd")
            for (int64_t p = 0; p < P; ++p) {
              const scalar_t xd = xp[o + p] * dp[o + p];
              v[p] = xd;
              dab[p] += gc * xd;
              cb[p] += (gc * xp[o + p] == kb[p]) ? scalar_t(1) : scalar_t(0);
            }
            dgb[c] = dot(v, ab, P);
          }
        } else {
          std::fill(dgb, dgb + C, scalar_t(0));
          scalar_t* __restrict__ v = tmp.data();
          _Pragma("omp simd")
          for (int64_t p = 0; p < P; ++p) {
            const int64_t o = (b * P + p) * C;
            const scalar_t ap_ = ab[p], kp_ = kb[p];
            scalar_t cnt = 0;
            _Pragma("omp simd")
            for (int64_t c = 0; c < C; ++c) {
              const scalar_t xd = xp[o + c] * dp[o + c];
              v[c] = xd;
              dgb[c] += xd * ap_;
              cnt += (gb[c] * xp[o + c] == kp_) ? scalar_t(1) : scalar_t(0);
            }
            dab[p] = dot(v, gb, C);
            cb[p] = cnt;
          }
        }
      }
    });
  });
  return {da, dg, count};
}

at::Tensor cbam_backward_mask(const at::Tensor& x, const at::Tensor& g_, const at::Tensor& peak_,
                              const at::Tensor& dmean_, const at::Tensor& share_) {
  check_input(x, "cbam_backward_mask");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const bool cl = is_channels_last(x);
  auto g = flat(g_, B, C, x);
  auto peak = flat(peak_, B, P, x);
  auto dmean = flat(dmean_, B, P, x);
  auto share = flat(share_, B, P, x);
  auto dg = at::empty({B, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_backward_mask", [&] {
    const scalar_t* __restrict__ xp = x.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ gp = g.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ kp = peak.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ mp = dmean.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ sp = share.const_data_ptr<scalar_t>();
    scalar_t* __restrict__ dgp = dg.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> tmp(std::max(P, C));
      scalar_t* __restrict__ w = tmp.data();
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* __restrict__ gb = gp + b * C;
        const scalar_t* __restrict__ kb = kp + b * P;
        const scalar_t* __restrict__ mb = mp + b * P;
        const scalar_t* __restrict__ sb = sp + b * P;
        scalar_t* __restrict__ dgb = dgp + b * C;
        if (!cl) {
          _Pragma("omp simd")
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t* __restrict__ row = xp + (b * C + c) * P;
            const scalar_t gc = gb[c];
            _Pragma("omp simd")
            for (int64_t p = 0; p < P; ++p) w[p] = mb[p] + ((gc * row[p] == kb[p]) ? sb[p] : scalar_t(0));
            dgb[c] = dot(row, w, P);
          }
        } else {
          std::fill(dgb, dgb + C, scalar_t(0));
          _Pragma("omp simd")
          for (int64_t p = 0; p < P; ++p) {
            const scalar_t* __restrict__ row = xp + (b * P + p) * C;
            const scalar_t m = mb[p], s = sb[p], k = kb[p];
            _Pragma("omp simd")
            for (int64_t c = 0; c < C; ++c) dgb[c] += row[c] * (m + ((gb[c] * row[c] == k) ? s : scalar_t(0)));
          }
        }
      }
    });
  });
  return dg;
}

at::Tensor cbam_backward_input(const at::Tensor& x, const at::Tensor& dout_, const at::Tensor& g_,
                               const at::Tensor& a_, const at::Tensor& peak_, const at::Tensor& dmean_,
                               const at::Tensor& share_, const at::Tensor& davg_, const at::Tensor& dpeak_,
                               const at::Tensor& index_) {
  check_input(x, "cbam_backward_input");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const bool cl = is_channels_last(x);
  auto dout = dout_.contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous).to(x.scalar_type());
  auto g = flat(g_, B, C, x);
  auto a = flat(a_, B, P, x);
  auto peak = flat(peak_, B, P, x);
  auto dmean = flat(dmean_, B, P, x);
  auto share = flat(share_, B, P, x);
  auto davg = flat(davg_, B, C, x);
  auto dpeak = flat(dpeak_, B, C, x);
  auto index = index_.reshape({B, C}).to(at::kLong).contiguous();
  auto dx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cbam_backward_input", [&] {
    const scalar_t* __restrict__ xp = x.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ dp = dout.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ gp = g.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ ap = a.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ kp = peak.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ mp = dmean.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ sp = share.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ vp = davg.const_data_ptr<scalar_t>();
    const scalar_t* __restrict__ pp = dpeak.const_data_ptr<scalar_t>();
    const int64_t* __restrict__ ip = index.const_data_ptr<int64_t>();
    scalar_t* __restrict__ op = dx.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const scalar_t* __restrict__ gb = gp + b * C;
        const scalar_t* __restrict__ ab = ap + b * P;
        const scalar_t* __restrict__ kb = kp + b * P;
        const scalar_t* __restrict__ mb = mp + b * P;
        const scalar_t* __restrict__ sb = sp + b * P;
        const scalar_t* __restrict__ vb = vp + b * C;
        if (!cl) {
          _Pragma("omp simd")
          for (int64_t c = 0; c < C; ++c) {
            const int64_t o = (b * C + c) * P;
            const scalar_t gc = gb[c], va = vb[c];
            _Pragma("omp simd")
            for (int64_t p = 0; p < P; ++p) {
              const scalar_t xv = xp[o + p];
              const scalar_t t = dp[o + p] * ab[p] + mb[p] + ((gc * xv == kb[p]) ? sb[p] : scalar_t(0));
              op[o + p] = gc * t + va;
            }
            op[o + ip[b * C + c]] += pp[b * C + c];
          }
        } else {
          _Pragma("omp simd")
          for (int64_t p = 0; p < P; ++p) {
            const int64_t o = (b * P + p) * C;
            const scalar_t ap_ = ab[p], m = mb[p], s = sb[p], k = kb[p];
            _Pragma("omp simd")
            for (int64_t c = 0; c < C; ++c) {
              const scalar_t xv = xp[o + c];
              const scalar_t t = dp[o + c] * ap_ + m + ((gb[c] * xv == k) ? s : scalar_t(0));
              op[o + c] = gb[c] * t + vb[c];
            }
          }
          _Pragma("omp simd")
          for (int64_t c = 0; c < C; ++c) op[(b * P + ip[b * C + c]) * C + c] += pp[b * C + c];
        }
      }
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY(convattn_cbam, m) {
  m.def("hw_pool(Tensor x, bool with_index) -> Tensor[]", &cbam_hw_pool);
  m.def("channel_pool(Tensor x, Tensor g) -> Tensor", &cbam_channel_pool);
  m.def("apply(Tensor x, Tensor g, Tensor a) -> Tensor", &cbam_apply);
  m.def("backward_gates(Tensor x, Tensor dout, Tensor g, Tensor a, Tensor peak) -> Tensor[]", &cbam_backward_gates);
  m.def("backward_mask(Tensor x, Tensor g, Tensor peak, Tensor dmean, Tensor share) -> Tensor", &cbam_backward_mask);
  m.def(
      "backward_input(Tensor x, Tensor dout, Tensor g, Tensor a, Tensor peak, Tensor dmean, Tensor share, "
      "Tensor davg, Tensor dpeak, Tensor index) -> Tensor",
      &cbam_backward_input);
}
