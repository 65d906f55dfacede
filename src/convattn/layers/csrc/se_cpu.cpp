// Squeeze-and-Excitation on the CPU, the whole layer per sample (ReLU MLP, sigmoid gate):
//
//   z = mean_p x,  g = sigmoid(W2 relu(W1 z + b1) + b2),  out = x s  with  s = g
//   backward: dg = sum_p x dout (through the MLP to dz), dx = dout s + dz / P
//
// The identity blend x + gamma (x g - x) (models' IdentityBlend) is the same layer with the scale
// s = 1 + gamma (g - 1): the gate's gradient is gamma sum_p x dout and
// dgamma = sum_(b,c) (g - 1) sum_p x dout, so the blend costs no pass of its own.
//
// x (B, C, P) is stored NCHW or channels-last. A sample is read from memory once per
// direction (plus dout in the backward); the second pass over it finds it in cache.

#include "common.h"

#include <torch/library.h>

#include <vector>

namespace {

using namespace convattn_kernels;

template <typename T>
void mean_sample(const T* __restrict__ x, int64_t C, int64_t P, bool cl, T* __restrict__ z, T* __restrict__ ones) {
  if (!cl) {
    for (int64_t c = 0; c < C; ++c) z[c] = dot(x + c * P, ones, P) / P;
  } else {  // four rows at a time: a quarter of the loads and stores of z (in L1) per element of x
    std::fill(z, z + C, T(0));
    int64_t p = 0;
    for (; p + 4 <= P; p += 4) {
      const T* __restrict__ r = x + p * C;
      _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) z[c] += (r[c] + r[c + C]) + (r[c + 2 * C] + r[c + 3 * C]);
    }
    for (; p < P; ++p) {
      const T* __restrict__ row = x + p * C;
      _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) z[c] += row[c];
    }
    _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) z[c] /= P;
  }
}

template <typename T>
void scale_sample(const T* __restrict__ x, int64_t C, int64_t P, bool cl, const T* __restrict__ s,
                  T* __restrict__ out) {
  if (!cl) {
    for (int64_t c = 0; c < C; ++c) {
      const T sc = s[c];
      const T* __restrict__ row = x + c * P;
      T* __restrict__ o = out + c * P;
      _Pragma("omp simd") for (int64_t p = 0; p < P; ++p) o[p] = row[p] * sc;
    }
  } else {
    for (int64_t p = 0; p < P; ++p) {
      const T* __restrict__ row = x + p * C;
      T* __restrict__ o = out + p * C;
      _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) o[c] = row[c] * s[c];
    }
  }
}

// dg[c] = sum_p x dout
template <typename T>
void gate_grad_sample(const T* __restrict__ x, const T* __restrict__ dout, int64_t C, int64_t P, bool cl,
                      T* __restrict__ dg) {
  if (!cl) {
    for (int64_t c = 0; c < C; ++c) dg[c] = dot(x + c * P, dout + c * P, P);
  } else {
    std::fill(dg, dg + C, T(0));
    for (int64_t p = 0; p < P; ++p) {
      const T* __restrict__ row = x + p * C;
      const T* __restrict__ drow = dout + p * C;
      _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) dg[c] += row[c] * drow[c];
    }
  }
}

// dx = dout s + dmean (dmean = dz / P)
template <typename T>
void input_grad_sample(const T* __restrict__ dout, int64_t C, int64_t P, bool cl, const T* __restrict__ s,
                       const T* __restrict__ dmean, T* __restrict__ dx) {
  if (!cl) {
    for (int64_t c = 0; c < C; ++c) {
      const T sc = s[c], m = dmean[c];
      const T* __restrict__ drow = dout + c * P;
      T* __restrict__ o = dx + c * P;
      _Pragma("omp simd") for (int64_t p = 0; p < P; ++p) o[p] = drow[p] * sc + m;
    }
  } else {
    for (int64_t p = 0; p < P; ++p) {
      const T* __restrict__ drow = dout + p * C;
      T* __restrict__ o = dx + p * C;
      _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) o[c] = drow[c] * s[c] + dmean[c];
    }
  }
}

// The per-channel scale of the output: g, or 1 + gamma (g - 1) for the blend.
template <typename T>
const T* scale_of(const T* g, const T* gamma, int64_t C, T* s) {
  if (!gamma) return g;
  const T k = *gamma;
  _Pragma("omp simd") for (int64_t c = 0; c < C; ++c) s[c] = T(1) + k * (g[c] - T(1));
  return s;
}

struct Weights {
  at::Tensor w1, b1, w2, b2;  // as (R, C), (R), (C, R), (C); biases may be undefined
  int64_t R;
};

Weights weights_of(const at::Tensor& x, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                   const at::Tensor& w2, const std::optional<at::Tensor>& b2) {
  const int64_t C = x.size(1);
  TORCH_CHECK(w1.dim() >= 2 && w1.size(1) == C && w1.numel() == w1.size(0) * C,
              "se: expected fc1.weight of shape (R, ", C, "[, 1, 1]), got ", w1.sizes());
  const int64_t R = w1.size(0);
  TORCH_CHECK(w2.numel() == C * R && w2.size(0) == C, "se: expected fc2.weight of shape (", C, ", ", R,
              "[, 1, 1]), got ", w2.sizes());
  auto t = [&](const at::Tensor& p, int64_t rows, int64_t cols) {
    check_param(p, x, "se");
    return p.reshape({rows, cols}).contiguous();
  };
  Weights w{t(w1, R, C), at::Tensor(), t(w2, C, R), at::Tensor(), R};
  if (b1 && b1->defined()) {
    TORCH_CHECK(b1->numel() == R, "se: expected fc1.bias of ", R, " elements, got ", b1->numel());
    check_param(*b1, x, "se");
    w.b1 = b1->contiguous();
  }
  if (b2 && b2->defined()) {
    TORCH_CHECK(b2->numel() == C, "se: expected fc2.bias of ", C, " elements, got ", b2->numel());
    check_param(*b2, x, "se");
    w.b2 = b2->contiguous();
  }
  return w;
}

// Returns out, g (B, C), and for the backward z (B, C) and the hidden activations (B, R). ``gamma``
// (a 0-d tensor) makes it the identity blend.
Tensors4 forward_impl(const at::Tensor& x, const at::Tensor* gamma, const at::Tensor& w1,
                      const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2) {
  check_input(x, "se_forward");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const bool cl = is_channels_last(x);
  const Weights w = weights_of(x, w1, b1, w2, b2);
  const int64_t R = w.R;
  auto out = at::empty_like(x);
  auto g = at::empty({B, C}, x.options());
  auto z = at::empty({B, C}, x.options());
  auto hidden = at::empty({B, R}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "se_forward", [&] {
    using T = scalar_t;
    const T* xp = x.const_data_ptr<T>();
    const T* w1p = w.w1.const_data_ptr<T>();
    const T* b1p = w.b1.defined() ? w.b1.const_data_ptr<T>() : nullptr;
    const T* w2p = w.w2.const_data_ptr<T>();
    const T* b2p = w.b2.defined() ? w.b2.const_data_ptr<T>() : nullptr;
    const T* gammap = gamma ? gamma->const_data_ptr<T>() : nullptr;
    T* op = out.data_ptr<T>();
    T* zp = z.data_ptr<T>();
    T* gp = g.data_ptr<T>();
    T* hp = hidden.data_ptr<T>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1_) {
      std::vector<T> hsum(R), ones(cl ? 0 : P, T(1)), s(gammap ? C : 0);
      for (int64_t b = b0; b < b1_; ++b) {
        const T* xb = xp + b * C * P;
        T* zb = zp + b * C;
        T* gb = gp + b * C;
        mean_sample(xb, C, P, cl, zb, ones.data());
        mlp_forward(w1p, b1p, w2p, b2p, C, R, zb, 1, hp + b * R, hsum.data(), gb);
        scale_sample(xb, C, P, cl, scale_of(gb, gammap, C, s.data()), op + b * C * P);
      }
    });
  });
  return {out, g, z, hidden};
}

Tensors4 se_forward(const at::Tensor& x, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                    const at::Tensor& w2, const std::optional<at::Tensor>& b2) {
  return forward_impl(x, nullptr, w1, b1, w2, b2);
}

const at::Tensor& checked_gamma(const at::Tensor& gamma, const at::Tensor& x) {
  TORCH_CHECK(gamma.numel() == 1, "se_blend: expected gamma with one element, got shape ", gamma.sizes());
  check_param(gamma, x, "se_blend");
  return gamma;
}

Tensors4 se_blend_forward(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& w1,
                          const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                          const std::optional<at::Tensor>& b2) {
  const at::Tensor k = checked_gamma(gamma, x).reshape({}).contiguous();
  return forward_impl(x, &k, w1, b1, w2, b2);
}

// Returns dx (empty unless need_dx), dgamma (0-d; empty without gamma), d fc1.weight, d fc1.bias,
// d fc2.weight, d fc2.bias (weights as (R, C) / (C, R); bias gradients empty where there is no bias).
Tensors6 backward_impl(const at::Tensor& x, const at::Tensor& dout_, const at::Tensor* gamma, const at::Tensor& w1,
                       const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                       const at::Tensor& g_, const at::Tensor& z_, const at::Tensor& hidden_, bool need_dx) {
  check_input(x, "se_backward");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  const bool cl = is_channels_last(x);
  const Weights w = weights_of(x, w1, b1, w2, b2);
  const int64_t R = w.R;
  auto dout = like_x(dout_, x, cl);
  auto g = flat(g_, B, C, x);
  auto z = flat(z_, B, C, x);
  auto hidden = flat(hidden_, B, R, x);
  auto opt = x.options();
  auto dx = need_dx ? at::empty_like(x) : at::empty({0}, opt);
  auto dw1 = at::empty({R, C}, opt), db1 = at::empty({R}, opt), dw2 = at::empty({C, R}, opt), db2 = at::empty({C}, opt);
  auto dgamma = at::empty({}, opt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "se_backward", [&] {
    using T = scalar_t;
    const T* xp = x.const_data_ptr<T>();
    const T* dp = dout.const_data_ptr<T>();
    const T* w1p = w.w1.const_data_ptr<T>();
    const T* w2p = w.w2.const_data_ptr<T>();
    const T* gammap = gamma ? gamma->const_data_ptr<T>() : nullptr;
    // parameter gradients, flat: fc1.weight, fc1.bias, fc2.weight, fc2.bias, gamma
    const int64_t o_b1 = R * C, o_w2 = o_b1 + R, o_b2 = o_w2 + C * R, o_gamma = o_b2 + C;
    ChunkSums<T> sums(o_gamma + 1);
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1_) {
      T* part = sums.open(b0);
      std::vector<T> dg(C), dz(C), hsum(R), ds(R), s(gammap ? C : 0);
      for (int64_t b = b0; b < b1_; ++b) {
        const T* xb = xp + b * C * P;
        const T* db = dp + b * C * P;
        const T* gb = g.const_data_ptr<T>() + b * C;
        gate_grad_sample(xb, db, C, P, cl, dg.data());
        const T* sb = scale_of(gb, gammap, C, s.data());
        if (gammap) {  // through the blend: dgamma, and the gate's gradient scaled by gamma
          T acc = 0;
          for (int64_t c = 0; c < C; ++c) {
            acc += (gb[c] - T(1)) * dg[c];
            dg[c] *= *gammap;
          }
          part[o_gamma] += acc;
        }
        mlp_backward(w1p, w2p, C, R, z.const_data_ptr<T>() + b * C, 1, hidden.const_data_ptr<T>() + b * R, gb,
                     dg.data(), hsum.data(), ds.data(), part, part + o_b1, part + o_w2, part + o_b2, dz.data());
        if (need_dx) {
          for (int64_t c = 0; c < C; ++c) dz[c] /= P;
          input_grad_sample(db, C, P, cl, sb, dz.data(), dx.data_ptr<T>() + b * C * P);
        }
      }
    });
    const std::vector<T> total = sums.total();
    copy_into(dw1, total.data(), R * C);
    copy_into(db1, total.data() + o_b1, R);
    copy_into(dw2, total.data() + o_w2, C * R);
    copy_into(db2, total.data() + o_b2, C);
    copy_into(dgamma, total.data() + o_gamma, 1);
  });
  auto none = [&] { return at::empty({0}, opt); };  // a new one per absent gradient: outputs never alias
  return {dx, gamma ? dgamma : none(), dw1, w.b1.defined() ? db1 : none(), dw2, w.b2.defined() ? db2 : none()};
}

Tensors5 se_backward(const at::Tensor& x, const at::Tensor& dout, const at::Tensor& w1,
                     const std::optional<at::Tensor>& b1, const at::Tensor& w2, const std::optional<at::Tensor>& b2,
                     const at::Tensor& g, const at::Tensor& z, const at::Tensor& hidden, bool need_dx) {
  auto [dx, dgamma, dw1, db1, dw2, db2] = backward_impl(x, dout, nullptr, w1, b1, w2, b2, g, z, hidden, need_dx);
  return {dx, dw1, db1, dw2, db2};
}

// The blend's gradient has gamma's shape (0-d, or one element of gamma's own shape).
Tensors6 se_blend_backward(const at::Tensor& x, const at::Tensor& dout, const at::Tensor& gamma,
                           const at::Tensor& w1, const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                           const std::optional<at::Tensor>& b2, const at::Tensor& g, const at::Tensor& z,
                           const at::Tensor& hidden, bool need_dx) {
  const at::Tensor k = checked_gamma(gamma, x).reshape({}).contiguous();
  auto [dx, dgamma, dw1, db1, dw2, db2] = backward_impl(x, dout, &k, w1, b1, w2, b2, g, z, hidden, need_dx);
  return {dx, dgamma.reshape(gamma.sizes()), dw1, db1, dw2, db2};
}

}  // namespace

TORCH_LIBRARY(convattn_se, m) {
  m.def("forward(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2) -> (Tensor out, Tensor g, Tensor z, Tensor hidden)");
  m.def(
      "backward(Tensor x, Tensor dout, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor g, Tensor z, "
      "Tensor hidden, bool need_dx) -> (Tensor dx, Tensor dw1, Tensor db1, Tensor dw2, Tensor db2)");
}

TORCH_LIBRARY_IMPL(convattn_se, CPU, m) {
  m.impl("forward", &se_forward);
  m.impl("backward", &se_backward);
}

// The identity blend x + gamma (SE(x) - x) in the same kernels (gamma first among the parameters).
TORCH_LIBRARY(convattn_se_blend, m) {
  m.def(
      "forward(Tensor x, Tensor gamma, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2) -> (Tensor out, Tensor g, "
      "Tensor z, Tensor hidden)");
  m.def(
      "backward(Tensor x, Tensor dout, Tensor gamma, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, Tensor g, "
      "Tensor z, Tensor hidden, bool need_dx) -> (Tensor dx, Tensor dgamma, Tensor dw1, Tensor db1, Tensor dw2, "
      "Tensor db2)");
}

TORCH_LIBRARY_IMPL(convattn_se_blend, CPU, m) {
  m.impl("forward", &se_blend_forward);
  m.impl("backward", &se_blend_backward);
}
