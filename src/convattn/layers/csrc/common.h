// Helpers shared by convattn's CPU kernels (header-only; each kernel file includes it).

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

namespace convattn_kernels {

template <typename T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

inline bool is_channels_last(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
}

inline void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4, name, ": expected a 4-D (B, C, H, W) tensor, got ", x.dim(), "-D");
  TORCH_CHECK(x.device().is_cpu(), name, ": expected a CPU tensor, got ", x.device());
  TORCH_CHECK(x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast), name,
              ": expected contiguous or channels-last storage");
}

// A parameter: a CPU tensor of x's dtype (the kernels never convert or move one).
inline void check_param(const at::Tensor& p, const at::Tensor& x, const char* name) {
  TORCH_CHECK(p.device().is_cpu(), name, ": expected CPU parameters, got one on ", p.device());
  TORCH_CHECK(p.scalar_type() == x.scalar_type(), name, ": expected parameters of the input's dtype ",
              x.scalar_type(), ", got ", p.scalar_type());
}

// A (B, n) companion tensor, contiguous, on the CPU in x's dtype.
inline at::Tensor flat(const at::Tensor& t, int64_t b, int64_t n, const at::Tensor& x) {
  TORCH_CHECK(t.numel() == b * n, "expected ", b * n, " elements, got ", t.numel());
  check_param(t, x, "convattn kernel");
  return t.reshape({b, n}).contiguous();
}

using Tensors4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensors5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensors6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensors7 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// A full-size gradient in x's memory format and dtype.
inline at::Tensor like_x(const at::Tensor& t, const at::Tensor& x, bool cl) {
  TORCH_CHECK(t.sizes() == x.sizes(), "expected a gradient of shape ", x.sizes(), ", got ", t.sizes());
  check_param(t, x, "convattn kernel");
  return t.contiguous(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

template <typename T>
T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}

// Dot product with 32 lanes (several independent vector chains, so the sum is not
// limited by the latency of one accumulator).
template <typename T>
T dot(const T* __restrict__ u, const T* __restrict__ v, int64_t n) {
  constexpr int V = 32;
  if (n < V) {  // short (an MLP's hidden width): summing 32 lanes would cost more than the products
    T s = 0;
    _Pragma("omp simd reduction(+ : s)") for (int64_t i = 0; i < n; ++i) s += u[i] * v[i];
    return s;
  }
  T acc[V] = {};
  int64_t i = 0;
  for (; i + V <= n; i += V) {
    _Pragma("omp simd") for (int l = 0; l < V; ++l) acc[l] += u[i + l] * v[i + l];
  }
  T s = 0;
  for (int l = 0; l < V; ++l) s += acc[l];
  for (; i < n; ++i) s += u[i] * v[i];
  return s;
}

// The shared channel MLP of SE / CBAM on nv pooled vectors v (nv, C) of one sample:
//   h_v = relu(W1 v + b1) (stored in hidden (nv, R)),  g = sigmoid(W2 sum_v h_v + nv b2).
// b1, b2 may be null; ``hsum`` (R) is scratch.
template <typename T>
void mlp_forward(const T* w1, const T* b1, const T* w2, const T* b2, int64_t C, int64_t R, const T* pooled,
                 int64_t nv, T* hidden, T* hsum, T* g) {
  std::fill(hsum, hsum + R, T(0));
  for (int64_t v = 0; v < nv; ++v)
    for (int64_t j = 0; j < R; ++j) {
      const T z = dot(w1 + j * C, pooled + v * C, C) + (b1 ? b1[j] : T(0));
      hidden[v * R + j] = z > T(0) ? z : T(0);
      hsum[j] += hidden[v * R + j];
    }
  for (int64_t c = 0; c < C; ++c) g[c] = sigmoid(dot(w2 + c * R, hsum, R) + (b2 ? nv * b2[c] : T(0)));
}

// Its backward from dg (C), the gradient of g: accumulates into gw1 (R, C), gb1 (R), gw2 (C, R), gb2 (C)
// and writes d_pooled (nv, C). ``dg`` is overwritten (with the logits' gradient); hsum, ds (R) are scratch.
template <typename T>
void mlp_backward(const T* w1, const T* w2, int64_t C, int64_t R, const T* pooled, int64_t nv, const T* hidden,
                  const T* g, T* dg, T* hsum, T* ds, T* gw1, T* gb1, T* gw2, T* gb2, T* d_pooled) {
  for (int64_t c = 0; c < C; ++c) dg[c] *= g[c] * (T(1) - g[c]);
  std::fill(hsum, hsum + R, T(0));
  for (int64_t v = 0; v < nv; ++v)
    for (int64_t j = 0; j < R; ++j) hsum[j] += hidden[v * R + j];
  std::fill(ds, ds + R, T(0));
  for (int64_t c = 0; c < C; ++c) {
    gb2[c] += nv * dg[c];
    for (int64_t j = 0; j < R; ++j) {
      gw2[c * R + j] += dg[c] * hsum[j];
      ds[j] += w2[c * R + j] * dg[c];
    }
  }
  std::fill(d_pooled, d_pooled + nv * C, T(0));
  for (int64_t v = 0; v < nv; ++v)
    for (int64_t j = 0; j < R; ++j) {
      if (!(hidden[v * R + j] > T(0))) continue;  // relu: no gradient where it was off
      const T dz = ds[j];
      gb1[j] += dz;
      const T* __restrict__ wrow = w1 + j * C;
      const T* __restrict__ pv = pooled + v * C;
      T* __restrict__ gw = gw1 + j * C;
      T* __restrict__ dp = d_pooled + v * C;
      _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) {
        gw[c] += dz * pv[c];
        dp[c] += dz * wrow[c];
      }
    }
}

// Parameter gradients summed over the batch in a fixed order: each chunk of samples of an
// at::parallel_for accumulates its own partial sums (one flat buffer), and the chunks are added
// in the order of their first sample, so the result does not depend on which thread finishes
// first (it is reproducible for a given number of threads).
template <typename T>
class ChunkSums {
 public:
  explicit ChunkSums(int64_t size) : size_(size) {}

  // The zeroed buffer of the chunk that starts at sample ``first``.
  T* open(int64_t first) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<T>& part = parts_[first];
    part.assign(size_, T(0));
    return part.data();
  }

  std::vector<T> total() const {
    std::vector<T> sum(size_, T(0));
    for (const auto& entry : parts_)
      for (int64_t i = 0; i < size_; ++i) sum[i] += entry.second[i];
    return sum;
  }

 private:
  int64_t size_;
  std::mutex mutex_;
  std::map<int64_t, std::vector<T>> parts_;  // node-based: buffers stay put while others are added
};

// Copies ``n`` values from ``src`` into the contiguous tensor ``dst``.
template <typename T>
void copy_into(const at::Tensor& dst, const T* src, int64_t n) {
  std::copy(src, src + n, dst.data_ptr<T>());
}

}  // namespace convattn_kernels
