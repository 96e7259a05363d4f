// CPU kernel bodies, included once per instruction set by kernels_base.cpp and
// kernels_avx2.cpp inside `namespace lmx_cpu::LMX_ISA_NS`. No torch headers: raw pointers
// only. Everything is internal to the including translation unit except make_table().
//
// Seesaw row (see lossmix_math.h for the maths), for each chunk of kSeesawChunk columns
// (which stays in L1 between its passes): max, then exp & sum (storing the exponentials),
// chunk results merged with the online softmax update; a final pass scales the stored
// exponentials by w_s * exp(chunk max - row max) / row sum into the gradient. With q in
// {0, 1, 2} and bounded factors (product_route) the modified exponentials of every label set
// come from the plain ones by multiplications (one exp per logit); otherwise a second exp
// pass runs over the modified logits, shifted by the row max. The gradient row holds the
// first label set's exponentials; per thread, 2C floats of scratch (the plain exponentials
// and the second set's); no other temporaries.
#ifndef LMX_ISA_NS
#error "define LMX_ISA_NS before including kernels_impl.h"
#endif

#include "kernels.h"
#include "simd.h"
#include "../lossmix_math.h"

namespace lmx_cpu {
namespace LMX_ISA_NS {
namespace {

using lmx::lmx_max;
using lmx::lmx_min;

// ----------------------------------------------------------------------------- value policies
template <class T>
struct VP;

template <>
struct VP<float> {
  using V = lmx::vfloat;
  static constexpr int W = lmx::kFloatLanes;
  static V splat(float s) { return lmx::vsplat(s); }
  static V load(const float* p) { return lmx::vload(p); }
  static void store(float* p, V v) { lmx::vstore(p, v); }
  static V load_partial(const float* p, int64_t n, float fill) { return lmx::vload_partial(p, n, fill); }
  static void store_partial(float* p, V v, int64_t n) { lmx::vstore_partial(p, v, n); }
  static float hmax(V v) { return lmx::vhmax(v); }
  static float hsum(V v) { return lmx::vhsum(v); }
  static V exp(V v) { return lmx::vexp(v); }
};

template <>
struct VP<double> {
  using V = double;
  static constexpr int W = 1;
  static V splat(double s) { return s; }
  static V load(const double* p) { return *p; }
  static void store(double* p, V v) { *p = v; }
  static V load_partial(const double* p, int64_t n, double fill) { return n > 0 ? *p : fill; }
  static void store_partial(double* p, V v, int64_t n) {
    if (n > 0) *p = v;
  }
  static double hmax(V v) { return v; }
  static double hsum(V v) { return v; }
  static V exp(V v) { return std::exp(v); }
};

struct ScalarExp {
  float operator()(float x) const { return std::exp(x); }
  double operator()(double x) const { return std::exp(x); }
};
struct ScalarLog {
  float operator()(float x) const { return std::log(x); }
  double operator()(double x) const { return std::log(x); }
};

// ----------------------------------------------------------------------------- seesaw
template <class T>
struct Seesaw {
  using P = VP<T>;
  using V = typename P::V;
  static constexpr int W = P::W;

  static T ninf() { return -std::numeric_limits<T>::infinity(); }

  static T span_max(const T* z, int64_t n) {
    V a0 = P::splat(ninf()), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 4 * W <= n; k += 4 * W) {
      a0 = lmx_max(a0, P::load(z + k));
      a1 = lmx_max(a1, P::load(z + k + W));
      a2 = lmx_max(a2, P::load(z + k + 2 * W));
      a3 = lmx_max(a3, P::load(z + k + 3 * W));
    }
    for (; k + W <= n; k += W) a0 = lmx_max(a0, P::load(z + k));
    if (k < n) a1 = lmx_max(a1, P::load_partial(z + k, n - k, ninf()));
    return P::hmax(lmx_max(lmx_max(a0, a1), lmx_max(a2, a3)));
  }

  // sum of exp(src - m); with STORE the exponentials are written to dst (dst may be src).
  template <bool STORE>
  static T span_sum_exp(const T* src, T* dst, int64_t n, T m) {
    const V vm = P::splat(m);
    V s0 = P::splat(T(0)), s1 = s0;
    int64_t k = 0;
    for (; k + 2 * W <= n; k += 2 * W) {
      V e0 = P::exp(P::load(src + k) - vm);
      V e1 = P::exp(P::load(src + k + W) - vm);
      if (STORE) {
        P::store(dst + k, e0);
        P::store(dst + k + W, e1);
      }
      s0 = s0 + e0;
      s1 = s1 + e1;
    }
    for (; k + W <= n; k += W) {
      V e0 = P::exp(P::load(src + k) - vm);
      if (STORE) P::store(dst + k, e0);
      s0 = s0 + e0;
    }
    if (k < n) {
      V e0 = P::exp(P::load_partial(src + k, n - k, ninf()) - vm);
      if (STORE) P::store_partial(dst + k, e0, n - k);
      s1 = s1 + e0;
    }
    return P::hsum(s0 + s1);
  }

  // buf = modified logits of the span, returns their max.
  // buf = modified logits of the span shifted by -shift (the row max), returns their max.
  template <bool UP, bool UQ>
  static T span_modified(const T* z, T shift, const T* lc, T* buf, int64_t n, T lcj, T thr, T p, T q) {
    const V vlcj = P::splat(lcj), vthr = P::splat(thr), vp = P::splat(p), vq = P::splat(q), zero = P::splat(T(0));
    const V vsh = P::splat(shift);
    V a0 = P::splat(ninf()), a1 = a0;
    int64_t k = 0;
    for (; k + 2 * W <= n; k += 2 * W) {
      V r0 = lmx::seesaw_modified_logit(P::load(z + k) - vsh, UP ? P::load(lc + k) : zero, vlcj, vp, vthr, vq, zero,
                                        UP, UQ);
      V r1 = lmx::seesaw_modified_logit(P::load(z + k + W) - vsh, UP ? P::load(lc + k + W) : zero, vlcj, vp, vthr, vq,
                                        zero, UP, UQ);
      P::store(buf + k, r0);
      P::store(buf + k + W, r1);
      a0 = lmx_max(a0, r0);
      a1 = lmx_max(a1, r1);
    }
    for (; k + W <= n; k += W) {
      V r0 = lmx::seesaw_modified_logit(P::load(z + k) - vsh, UP ? P::load(lc + k) : zero, vlcj, vp, vthr, vq, zero,
                                        UP, UQ);
      P::store(buf + k, r0);
      a0 = lmx_max(a0, r0);
    }
    if (k < n) {
      V zz = P::load_partial(z + k, n - k, ninf()) - vsh;
      V ll = UP ? P::load_partial(lc + k, n - k, T(0)) : zero;
      V r0 = lmx::seesaw_modified_logit(zz, ll, vlcj, vp, vthr, vq, zero, UP, UQ);
      P::store_partial(buf + k, r0, n - k);
      a1 = lmx_max(a1, r0);
    }
    return P::hmax(lmx_max(a0, a1));
  }

  // out_s = exp(y'_s) for the NA active sets from E·fE = exp(y) (see seesaw_modified_exp);
  // returns their sums through r0 / r1.
  template <bool UP, int QI, int NA>
  static void span_product(const T* E, T fE, int64_t n, const T* A, const T* b, const T* c, T* out0, T* out1, T& r0,
                           T& r1) {
    const V one = P::splat(T(1)), vf = P::splat(fE), b0 = P::splat(b[0]), b1 = P::splat(b[1]), c0 = P::splat(c[0]),
            c1 = P::splat(c[1]);
    V s0 = P::splat(T(0)), s1 = s0;
    int64_t k = 0;
    for (; k + W <= n; k += W) {
      const V ey = P::load(E + k) * vf;
      const V ak = UP ? P::load(A + k) : one;
      const V v0 = lmx::seesaw_modified_exp(ey, ak, b0, c0, one, UP, QI);
      P::store(out0 + k, v0);
      s0 = s0 + v0;
      if (NA == 2) {
        const V v1 = lmx::seesaw_modified_exp(ey, ak, b1, c1, one, UP, QI);
        P::store(out1 + k, v1);
        s1 = s1 + v1;
      }
    }
    if (k < n) {
      const V ey = P::load_partial(E + k, n - k, T(0)) * vf;
      const V ak = UP ? P::load_partial(A + k, n - k, T(1)) : one;
      const V v0 = lmx::seesaw_modified_exp(ey, ak, b0, c0, one, UP, QI);
      P::store_partial(out0 + k, v0, n - k);
      s0 = s0 + v0;
      if (NA == 2) {
        const V v1 = lmx::seesaw_modified_exp(ey, ak, b1, c1, one, UP, QI);
        P::store_partial(out1 + k, v1, n - k);
        s1 = s1 + v1;
      }
    }
    r0 = P::hsum(s0);
    r1 = P::hsum(s1);
  }

  static void span_scale(T* g, int64_t n, T f) {
    const V vf = P::splat(f);
    int64_t k = 0;
    for (; k + W <= n; k += W) P::store(g + k, P::load(g + k) * vf);
    for (; k < n; ++k) g[k] = g[k] * f;
  }

  static void span_mixed(T* g, const T* e1, int64_t n, T f0, T f1) {
    const V v0 = P::splat(f0), v1 = P::splat(f1);
    int64_t k = 0;
    for (; k + W <= n; k += W) P::store(g + k, lmx::mixed_grad(P::load(g + k), v0, P::load(e1 + k), v1));
    for (; k < n; ++k) g[k] = lmx::mixed_grad(g[k], f0, e1[k], f1);
  }

  // Softmax of the plain row z[0, C): exponentials (relative to each chunk's max) into e,
  // chunk maxima into cm; returns the merged (max, sum).
  static void softmax_plain(const T* z, T* e, int64_t C, T* cm, T& M, T& Ssum) {
    M = ninf();
    Ssum = T(0);
    for (int64_t c0 = 0, ch = 0; c0 < C; c0 += kSeesawChunk, ++ch) {
      const int64_t len = std::min<int64_t>(kSeesawChunk, C - c0);
      const T m = span_max(z + c0, len);
      const T s = span_sum_exp<true>(z + c0, e + c0, len, m);
      cm[ch] = m;
      lmx::softmax_merge(M, Ssum, m, s, ScalarExp());
    }
  }

  // (max, sum of exp(z - max)) of the plain row
  static void softmax_state(const T* z, int64_t C, T& M, T& Ssum) {
    M = ninf();
    Ssum = T(0);
    for (int64_t c0 = 0; c0 < C; c0 += kSeesawChunk) {
      const int64_t len = std::min<int64_t>(kSeesawChunk, C - c0);
      const T m = span_max(z + c0, len);
      const T s = span_sum_exp<false>(z + c0, nullptr, len, m);
      lmx::softmax_merge(M, Ssum, m, s, ScalarExp());
    }
  }

  static T row_max(const T* z, int64_t C) {
    T M = ninf();
    for (int64_t c0 = 0; c0 < C; c0 += kSeesawChunk) M = lmx_max(M, span_max(z + c0, std::min<int64_t>(kSeesawChunk, C - c0)));
    return M;
  }

  template <bool UP, bool UQ>
  static void softmax_modified(const SeesawArgs<T>& a, const T* z, T shift, T* e, T* cm, T lcj, T thr, T& M,
                               T& Ssum) {
    M = ninf();
    Ssum = T(0);
    for (int64_t c0 = 0, ch = 0; c0 < a.C; c0 += kSeesawChunk, ++ch) {
      const int64_t len = std::min<int64_t>(kSeesawChunk, a.C - c0);
      const T m = span_modified<UP, UQ>(z + c0, shift, UP ? a.log_counts + c0 : nullptr, e + c0, len, lcj, thr, a.p,
                                         a.q);
      const T s = span_sum_exp<true>(e + c0, e + c0, len, m);
      cm[ch] = m;
      lmx::softmax_merge(M, Ssum, m, s, ScalarExp());
    }
  }

  static void softmax_modified_any(const SeesawArgs<T>& a, const T* z, T shift, T* e, T* cm, T lcj, T thr, T& M,
                                   T& Ssum) {
    if (a.use_p && a.use_q) softmax_modified<true, true>(a, z, shift, e, cm, lcj, thr, M, Ssum);
    else if (a.use_p) softmax_modified<true, false>(a, z, shift, e, cm, lcj, thr, M, Ssum);
    else softmax_modified<false, true>(a, z, shift, e, cm, lcj, thr, M, Ssum);
  }

  // g[0, C) *= coef * exp(cm[chunk] - M) / Ssum
  static void finalize_one(T* g, int64_t C, const T* cm, T M, T Ssum, T coef) {
    for (int64_t c0 = 0, ch = 0; c0 < C; c0 += kSeesawChunk, ++ch) {
      const int64_t len = std::min<int64_t>(kSeesawChunk, C - c0);
      span_scale(g + c0, len, coef * std::exp(cm[ch] - M) / Ssum);
    }
  }

  static void finalize_two(T* g, const T* e1, int64_t C, const T* cm0, T M0, T S0, T w0, const T* cm1, T M1, T S1,
                           T w1) {
    for (int64_t c0 = 0, ch = 0; c0 < C; c0 += kSeesawChunk, ++ch) {
      const int64_t len = std::min<int64_t>(kSeesawChunk, C - c0);
      span_mixed(g + c0, e1 + c0, len, w0 * std::exp(cm0[ch] - M0) / S0, w1 * std::exp(cm1[ch] - M1) / S1);
    }
  }

  // The exp-free route for the modified logits (seesaw_modified_exp): q in {0, 1, 2} and the
  // factors bounded (b_j <= e^30, c_j^q <= e^60) so nothing overflows or underflows.
  static bool product_route(const SeesawArgs<T>& a) {
    if (a.use_q && !(a.q == T(1) || a.q == T(2))) return false;
    if (a.use_p && !(a.p * a.log_count_range <= T(30))) return false;
    if (a.use_q && !(a.q * -a.log_eps <= T(60))) return false;
    return true;
  }

  template <bool UP, int QI>
  static void product_sets(const SeesawArgs<T>& a, int nact, const T* E, const T* cmE, T M, T* const* bufs,
                           const T* b, const T* c, T* sums) {
    sums[0] = sums[1] = T(0);
    for (int64_t c0 = 0, ch = 0; c0 < a.C; c0 += kSeesawChunk, ++ch) {
      const int64_t len = std::min<int64_t>(kSeesawChunk, a.C - c0);
      const T fE = std::exp(cmE[ch] - M);
      T r0, r1;
      if (nact == 2)
        span_product<UP, QI, 2>(E + c0, fE, len, UP ? a.mit_a + c0 : nullptr, b, c, bufs[0] + c0, bufs[1] + c0, r0, r1);
      else
        span_product<UP, QI, 1>(E + c0, fE, len, UP ? a.mit_a + c0 : nullptr, b, c, bufs[0] + c0, nullptr, r0, r1);
      sums[0] += r0;
      sums[1] += r1;
    }
  }

  // Modified softmax of every active set from one exponential per logit (product_route).
  static T row_product(const SeesawArgs<T>& a, const T* z, T* g, T* scratch, const int64_t* lab, const T* w,
                       const bool* act, int S) {
    const int64_t C = a.C;
    T* e1 = scratch;
    T* E = scratch + C;
    T* cmE = E + C;
    T M, Splain;
    softmax_plain(z, E, C, cmE, M, Splain);  // E = exp(z - chunk max)
    const T log_sp = std::log(Splain);
    T* bufs[2] = {g, e1};
    T b[2] = {T(1), T(1)}, c[2] = {T(0), T(0)}, ws[2] = {T(0), T(0)}, yj[2] = {T(0), T(0)};
    int nact = 0;
    for (int s = 0; s < S; ++s) {
      if (!act[s]) continue;
      yj[nact] = z[lab[s]] - M;
      if (a.use_p) b[nact] = std::exp(a.p * (a.log_count_max - a.log_counts[lab[s]]));
      if (a.use_q) c[nact] = std::exp(-lmx::compensation_threshold(yj[nact], log_sp, a.log_eps));
      ws[nact] = w[s];
      ++nact;
    }
    if (nact == 0) {
      for (int64_t k = 0; k < C; ++k) g[k] = T(0);
      return T(0);
    }
    T sums[2];
    const int qi = a.use_q ? static_cast<int>(a.q) : 0;
    if (a.use_p) {
      if (qi == 2) product_sets<true, 2>(a, nact, E, cmE, M, bufs, b, c, sums);
      else if (qi == 1) product_sets<true, 1>(a, nact, E, cmE, M, bufs, b, c, sums);
      else product_sets<true, 0>(a, nact, E, cmE, M, bufs, b, c, sums);
    } else {
      if (qi == 2) product_sets<false, 2>(a, nact, E, cmE, M, bufs, b, c, sums);
      else product_sets<false, 1>(a, nact, E, cmE, M, bufs, b, c, sums);
    }
    T loss = T(0);
    for (int s = 0; s < nact; ++s) loss += ws[s] * (std::log(sums[s]) - yj[s]);  // lse(y') - y'_j
    if (nact == 1) span_scale(g, C, ws[0] / sums[0]);
    else span_mixed(g, e1, C, ws[0] / sums[0], ws[1] / sums[1]);
    return loss;
  }

  static void row(const SeesawArgs<T>& a, int64_t i, const T* z, T* g, T* scratch) {
    const int64_t C = a.C;
    const int64_t nch = (C + kSeesawChunk - 1) / kSeesawChunk;
    T* e1 = scratch;
    T* cm0 = scratch + 2 * C;
    T* cm1 = cm0 + nch;
    int64_t lab[2] = {0, 0};
    T w[2] = {T(0), T(0)};
    bool act[2] = {false, false};
    const int S = a.S < 2 ? a.S : 2;
    for (int s = 0; s < S; ++s) {
      const int64_t l = a.labels[s * a.lab_s + i * a.lab_n];
      lab[s] = l;
      act[s] = lmx::label_active(l, C, a.has_ignore != 0, a.ignore_index);
      w[s] = a.weights[s * a.w_s + i * a.w_n];
    }
    T loss = T(0);
    if (!act[0] && !act[1]) {
      // no class loss in this row (background, or ignored): zero class gradient, no softmax
      for (int64_t k = 0; k < C; ++k) g[k] = T(0);
    } else if (!a.use_p && !a.use_q) {
      // plain (mixed) cross-entropy: one softmax for every label set
      T M, Ssum;
      softmax_plain(z, g, C, cm0, M, Ssum);
      const T log_s = std::log(Ssum);
      T coef = T(0);
      for (int s = 0; s < S; ++s) {
        if (!act[s]) continue;
        coef += w[s];
        loss += w[s] * ((M - z[lab[s]]) + log_s);
      }
      finalize_one(g, C, cm0, M, Ssum, coef);
    } else if (product_route(a)) {
      loss = row_product(a, z, g, scratch, lab, w, act, S);
    } else {
      // Modified logits are computed shifted by the row max m (exactly representable
      // differences near the top of the row, also for logits of magnitude 1e4); the
      // compensation threshold in those coordinates is max(z_j - m, log sum exp(z - m) + log eps).
      T m = T(0), lse_y = T(0);
      if (a.use_q) {
        T s_plain;
        softmax_state(z, C, m, s_plain);
        lse_y = std::log(s_plain);
      } else {
        m = row_max(z, C);
      }
      T* bufs[2] = {g, e1};
      T* cms[2] = {cm0, cm1};
      T Ms[2] = {T(0), T(0)}, Ss[2] = {T(1), T(1)}, ws[2] = {T(0), T(0)};
      int nact = 0;
      for (int s = 0; s < S; ++s) {
        if (!act[s]) continue;
        const T yj = z[lab[s]] - m;
        const T thr = a.use_q ? lmx::compensation_threshold(yj, lse_y, a.log_eps) : T(0);
        const T lcj = a.use_p ? a.log_counts[lab[s]] : T(0);
        softmax_modified_any(a, z, m, bufs[nact], cms[nact], lcj, thr, Ms[nact], Ss[nact]);
        loss += w[s] * ((Ms[nact] - yj) + std::log(Ss[nact]));
        ws[nact] = w[s];
        ++nact;
      }
      if (nact == 0) {
        for (int64_t k = 0; k < C; ++k) g[k] = T(0);
      } else if (nact == 1) {
        finalize_one(g, C, cm0, Ms[0], Ss[0], ws[0]);
      } else {
        finalize_two(g, e1, C, cm0, Ms[0], Ss[0], ws[0], cm1, Ms[1], Ss[1], ws[1]);
      }
    }
    for (int s = 0; s < S; ++s)
      if (act[s]) g[lab[s]] -= w[s];
    a.loss[i] = loss;
    if (a.obj_weights != nullptr) {
      T oloss = T(0), g0 = T(0), g1 = T(0);
      for (int s = 0; s < S; ++s) {
        const T ow = a.obj_weights[s * a.ow_s + i * a.ow_n];
        T l, d0, d1;
        lmx::objectness_ce(z[C], z[C + 1], lab[s] == C, &l, &d0, &d1, ScalarExp(), ScalarLog());
        oloss += ow * l;
        g0 += ow * d0;
        g1 += ow * d1;
      }
      g[C] = g0;
      g[C + 1] = g1;
      a.obj_loss[i] = oloss;
    }
  }

  static void rows(const SeesawArgs<T>& a, int64_t r0, int64_t r1, T* scratch) {
    for (int64_t i = r0; i < r1; ++i) row(a, i, a.logits + i * a.ld, a.grad + i * a.ldg, scratch);
  }

  static void scale_rows(const ScaleArgs<T>& a, int64_t r0, int64_t r1) {
    const int64_t ncls = a.grad_obj != nullptr ? a.C : a.CT;
    if (a.out == a.grad) {  // in place
      for (int64_t i = r0; i < r1; ++i) {
        T* g = a.out + i * a.ldo;
        const T s = a.grad_loss[i * a.gl_s];
        if (s != T(1)) span_scale(g, ncls, s);
        if (a.grad_obj != nullptr) {
          const T so = a.grad_obj[i * a.go_s];
          if (so != T(1))
            for (int64_t k = ncls; k < a.CT; ++k) g[k] = g[k] * so;
        }
      }
      return;
    }
    for (int64_t i = r0; i < r1; ++i) {
      const T* __restrict g = a.grad + i * a.ldg;
      T* __restrict o = a.out + i * a.ldo;
      const T s = a.grad_loss[i * a.gl_s];
      for (int64_t k = 0; k < ncls; ++k) o[k] = g[k] * s;
      if (a.grad_obj != nullptr) {
        const T so = a.grad_obj[i * a.go_s];
        for (int64_t k = ncls; k < a.CT; ++k) o[k] = g[k] * so;
      }
    }
  }
};

template <class T>
void seesaw_rows(const SeesawArgs<T>& a, int64_t r0, int64_t r1, T* scratch) {
  Seesaw<T>::rows(a, r0, r1, scratch);
}
template <class T>
void seesaw_row(const SeesawArgs<T>& a, int64_t i, const T* z, T* g, T* scratch) {
  Seesaw<T>::row(a, i, z, g, scratch);
}
template <class T>
void scale_rows(const ScaleArgs<T>& a, int64_t r0, int64_t r1) {
  Seesaw<T>::scale_rows(a, r0, r1);
}

// ----------------------------------------------------------------------------- image mixing
// Channel-last spans use per-element pattern arrays of this many channel groups.
constexpr int64_t kPatternGroups = 16;
constexpr int64_t kMaxPatternChannels = 64;
// Work proceeds in blocks of about this many elements (the backward accumulates a block in
// an L1 buffer and stores it once).
constexpr int64_t kMixBlock = 2048;

// o[k] = lam * v(xa[k]) + (1 - lam) * v(xb[k]). PAT: mean/std vary along the span with
// period `period` (channels-last patterns starting at channel 0), else they are constants.
template <bool M, bool SD, bool PAT, class Tin, class Tm, class Tout>
void mix_span(const Tin* __restrict xa, const Tin* __restrict xb, Tout* __restrict o, int64_t n, Tm lam, Tm oml,
              Tm scale, const Tm* __restrict mp, const Tm* __restrict sp, int64_t period) {
  if (!PAT) {
    const Tm mean = M ? *mp : Tm(0), sd = SD ? *sp : Tm(1);
    for (int64_t k = 0; k < n; ++k) {
      const Tm va = lmx::normalise(static_cast<Tm>(xa[k]), scale, mean, sd, M, SD);
      const Tm vb = lmx::normalise(static_cast<Tm>(xb[k]), scale, mean, sd, M, SD);
      o[k] = static_cast<Tout>(lmx::mix_value(va, vb, lam, oml));
    }
  } else {
    for (int64_t base = 0; base < n; base += period) {
      const int64_t len = std::min(period, n - base);
      const Tin* __restrict pa = xa + base;
      const Tin* __restrict pb = xb + base;
      Tout* __restrict po = o + base;
      for (int64_t j = 0; j < len; ++j) {
        const Tm va = lmx::normalise(static_cast<Tm>(pa[j]), scale, mp[j], sp[j], M, SD);
        const Tm vb = lmx::normalise(static_cast<Tm>(pb[j]), scale, mp[j], sp[j], M, SD);
        po[j] = static_cast<Tout>(lmx::mix_value(va, vb, lam, oml));
      }
    }
  }
}

// Calls f(e, len, c) for the runs of one channel c of [e0, e1) in an NCHW-like layout.
template <class F>
void channel_runs(int64_t e0, int64_t e1, int64_t inner, int64_t channels, F&& f) {
  int64_t e = e0;
  while (e < e1) {
    const int64_t plane = e / inner;
    const int64_t end = std::min(e1, (plane + 1) * inner);
    f(e, end - e, plane % channels);
    e = end;
  }
}

template <class Tm>
struct ChannelPattern {
  Tm mean[kMaxPatternChannels * kPatternGroups];
  Tm stdv[kMaxPatternChannels * kPatternGroups];
  int64_t period = 0;
  ChannelPattern(const Tm* m, const Tm* s, int64_t channels) {
    period = channels * kPatternGroups;
    for (int64_t j = 0; j < period; ++j) {
      mean[j] = m != nullptr ? m[j % channels] : Tm(0);
      stdv[j] = s != nullptr ? s[j % channels] : Tm(1);
    }
  }
};

// Block length: a multiple of the channel count for channels-last patterns.
inline int64_t mix_block(int64_t channels, int64_t inner, bool per_channel) {
  return per_channel && inner == 1 && channels > 1 ? std::max<int64_t>(1, kMixBlock / channels) * channels
                                                    : kMixBlock;
}

// o[0, e1 - e0) = mixed elements [e0, e1) of one sample; xa, xb point at element e0 (e0 a
// multiple of channels for channels-last).
template <bool M, bool SD, class Tin, class Tm, class Tout>
void mix_block_values(const MixArgs<Tm>& a, const ChannelPattern<Tm>* pat, const Tin* xa, const Tin* xb, Tout* o,
                      int64_t e0, int64_t e1, Tm lam, Tm oml) {
  if (!M && !SD) {
    mix_span<false, false, false>(xa, xb, o, e1 - e0, lam, oml, a.scale, (const Tm*)nullptr, (const Tm*)nullptr, 1);
  } else if (a.inner > 1 || a.channels == 1) {
    channel_runs(e0, e1, a.inner, a.channels, [&](int64_t e, int64_t len, int64_t c) {
      mix_span<M, SD, false>(xa + (e - e0), xb + (e - e0), o + (e - e0), len, lam, oml, a.scale,
                             M ? a.mean + c : nullptr, SD ? a.stdv + c : nullptr, 1);
    });
  } else if (pat != nullptr) {
    mix_span<M, SD, true>(xa, xb, o, e1 - e0, lam, oml, a.scale, pat->mean, pat->stdv, pat->period);
  } else {
    for (int64_t e = e0; e < e1; ++e) {
      const int64_t c = e % a.channels;
      mix_span<M, SD, false>(xa + (e - e0), xb + (e - e0), o + (e - e0), 1, lam, oml, a.scale,
                             M ? a.mean + c : nullptr, SD ? a.stdv + c : nullptr, 1);
    }
  }
}

template <bool M, bool SD, class Tin, class Tm, class Tout>
void mix_sample(const MixArgs<Tm>& a, const Tin* xa, const Tin* xb, Tout* out, int64_t e0, int64_t e1, Tm lam,
                Tm oml) {
  const bool pattern = (M || SD) && a.inner == 1 && a.channels > 1 && a.channels <= kMaxPatternChannels;
  ChannelPattern<Tm> pat(pattern ? a.mean : nullptr, pattern ? a.stdv : nullptr, pattern ? a.channels : 1);
  const int64_t blk = mix_block(a.channels, a.inner, M || SD);
  for (int64_t e = e0; e < e1; e += blk)
    mix_block_values<M, SD>(a, pattern ? &pat : nullptr, xa + e, xb + e, out + e, e, std::min(e1, e + blk), lam,
                            oml);
}

// ----- float32 maths between storage kinds, the values converted in registers
template <int K>
inline float load_one(const void* p, int64_t i) {
  if constexpr (K == kElemF32) return static_cast<const float*>(p)[i];
  else if constexpr (K == kElemU8) return static_cast<float>(static_cast<const uint8_t*>(p)[i]);
  else if constexpr (K == kElemF16) return lmx::sf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  else return lmx::sbf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}
template <int K>
inline void store_one(void* p, int64_t i, float v) {
  if constexpr (K == kElemF32) static_cast<float*>(p)[i] = v;
  else if constexpr (K == kElemF16) static_cast<uint16_t*>(p)[i] = lmx::sf32_to_f16(v);
  else static_cast<uint16_t*>(p)[i] = lmx::sf32_to_bf16(v);
}

template <int K>
inline lmx::vfloat load_kind(const void* p, int64_t i) {
#if LMX_VECTOR_EXT
  if constexpr (K == kElemF32) {
    return lmx::vload(static_cast<const float*>(p) + i);
  } else if constexpr (K == kElemU8) {
    return lmx::vload_u8(static_cast<const uint8_t*>(p) + i);
  } else if constexpr (K == kElemF16) {
    return lmx::vf16_to_f32(static_cast<const uint16_t*>(p) + i);
  } else {
    return lmx::vbf16_to_f32(static_cast<const uint16_t*>(p) + i);
  }
#else
  return load_one<K>(p, i);
#endif
}
template <int K>
inline void store_kind(void* p, int64_t i, lmx::vfloat v) {
#if LMX_VECTOR_EXT
  if constexpr (K == kElemF32) lmx::vstore(static_cast<float*>(p) + i, v);
  else if constexpr (K == kElemF16) lmx::vf32_to_f16(static_cast<uint16_t*>(p) + i, v);
  else lmx::vf32_to_bf16(static_cast<uint16_t*>(p) + i, v);
#else
  store_one<K>(p, i, v);
#endif
}
// out[e, e + n) = lam v(xa) + (1 - lam) v(xb) with constant mean / std, read and written in their kinds.
template <int IK, int OK, bool M, bool SD>
void mix_span_kinds(const void* xa, const void* xb, void* o, int64_t e, int64_t n, float lam, float oml,
                    float scale, float mean, float sd) {
  int64_t k = 0;
#if LMX_VECTOR_EXT
  constexpr int W = lmx::kFloatLanes;
  const lmx::vfloat vl = lmx::vsplat(lam), vo = lmx::vsplat(oml), vs = lmx::vsplat(scale), vm = lmx::vsplat(mean),
                    vd = lmx::vsplat(sd);
  if constexpr ((IK == kElemBF16 || OK == kElemBF16) && lmx::kBf16PairInOrder) {
    // two vectors per bfloat16 load / store (one 128-bit access in the baseline build)
    for (; k + 2 * W <= n; k += 2 * W) {
      lmx::vfloat a0, a1, b0, b1;
      if constexpr (IK == kElemBF16) {
        lmx::vbf16_load2(static_cast<const uint16_t*>(xa) + e + k, a0, a1);
        lmx::vbf16_load2(static_cast<const uint16_t*>(xb) + e + k, b0, b1);
      } else {
        a0 = load_kind<IK>(xa, e + k), a1 = load_kind<IK>(xa, e + k + W);
        b0 = load_kind<IK>(xb, e + k), b1 = load_kind<IK>(xb, e + k + W);
      }
      const lmx::vfloat r0 = lmx::mix_value(lmx::normalise(a0, vs, vm, vd, M, SD),
                                            lmx::normalise(b0, vs, vm, vd, M, SD), vl, vo);
      const lmx::vfloat r1 = lmx::mix_value(lmx::normalise(a1, vs, vm, vd, M, SD),
                                            lmx::normalise(b1, vs, vm, vd, M, SD), vl, vo);
      if constexpr (OK == kElemBF16) {
        lmx::vbf16_store2(static_cast<uint16_t*>(o) + e + k, r0, r1);
      } else {
        store_kind<OK>(o, e + k, r0);
        store_kind<OK>(o, e + k + W, r1);
      }
    }
  }
  for (; k + W <= n; k += W) {
    const lmx::vfloat va = lmx::normalise(load_kind<IK>(xa, e + k), vs, vm, vd, M, SD);
    const lmx::vfloat vb = lmx::normalise(load_kind<IK>(xb, e + k), vs, vm, vd, M, SD);
    store_kind<OK>(o, e + k, lmx::mix_value(va, vb, vl, vo));
  }
#endif
  for (; k < n; ++k) {
    const float va = lmx::normalise(load_one<IK>(xa, e + k), scale, mean, sd, M, SD);
    const float vb = lmx::normalise(load_one<IK>(xb, e + k), scale, mean, sd, M, SD);
    store_one<OK>(o, e + k, lmx::mix_value(va, vb, lam, oml));
  }
}

// A sample's elements [e0, e1) with mean / std constant per channel run (NCHW, one channel, or
// none): every value converted in registers.
template <int IK, int OK, bool M, bool SD>
void mix_sample_fused(const MixArgs<float>& a, const void* xa, const void* xb, void* o, int64_t e0, int64_t e1,
                      float lam, float oml) {
  if (!M && !SD) {
    mix_span_kinds<IK, OK, false, false>(xa, xb, o, e0, e1 - e0, lam, oml, a.scale, 0.0f, 1.0f);
    return;
  }
  channel_runs(e0, e1, a.inner, a.channels, [&](int64_t e, int64_t len, int64_t c) {
    mix_span_kinds<IK, OK, M, SD>(xa, xb, o, e, len, lam, oml, a.scale, M ? a.mean[c] : 0.0f, SD ? a.stdv[c] : 1.0f);
  });
}

template <bool M, bool SD, int IK>
bool mix_fused_out(const MixArgs<float>& a, int out_kind, const void* xa, const void* xb, void* o, int64_t e0,
                   int64_t e1, float lam, float oml) {
  switch (out_kind) {
    case kElemF32: mix_sample_fused<IK, kElemF32, M, SD>(a, xa, xb, o, e0, e1, lam, oml); return true;
    case kElemF16: mix_sample_fused<IK, kElemF16, M, SD>(a, xa, xb, o, e0, e1, lam, oml); return true;
    case kElemBF16: mix_sample_fused<IK, kElemBF16, M, SD>(a, xa, xb, o, e0, e1, lam, oml); return true;
    default: return false;
  }
}

// Whether the register-converting path applies: half precision on either side, mean / std
// constant along runs (not the channels-last pattern), and float16 converted in registers only
// where the build has F16C (the baseline build's array conversions use it at run time).
template <bool M, bool SD>
bool mix_fused(const MixArgs<float>& a, int in_kind, int out_kind, const void* xa, const void* xb, void* o,
               int64_t e0, int64_t e1, float lam, float oml) {
  const bool half = in_kind == kElemF16 || in_kind == kElemBF16 || out_kind != kElemF32;
  if (!half || ((M || SD) && a.inner == 1 && a.channels > 1)) return false;
#ifndef LMX_F16C
  if (in_kind == kElemF16 || out_kind == kElemF16) return false;
#endif
  switch (in_kind) {
    case kElemF32: return mix_fused_out<M, SD, kElemF32>(a, out_kind, xa, xb, o, e0, e1, lam, oml);
    case kElemU8: return mix_fused_out<M, SD, kElemU8>(a, out_kind, xa, xb, o, e0, e1, lam, oml);
    case kElemF16: return mix_fused_out<M, SD, kElemF16>(a, out_kind, xa, xb, o, e0, e1, lam, oml);
    default: return mix_fused_out<M, SD, kElemBF16>(a, out_kind, xa, xb, o, e0, e1, lam, oml);
  }
}

// The same for float32 maths between storage kinds (ElemKind): converted in registers where
// mix_fused applies; else uint8 and float32 samples read in place, float16 / bfloat16 ones
// converted block by block into L1 buffers, and a float16 / bfloat16 output converted from a
// float32 block.
template <bool M, bool SD>
void mix_sample_kinds(const MixArgs<float>& a, int in_kind, int out_kind, const void* xa, const void* xb, void* out,
                      int64_t e0, int64_t e1, float lam, float oml) {
  if (mix_fused<M, SD>(a, in_kind, out_kind, xa, xb, out, e0, e1, lam, oml)) return;
  const bool pattern = (M || SD) && a.inner == 1 && a.channels > 1 && a.channels <= kMaxPatternChannels;
  ChannelPattern<float> pat(pattern ? a.mean : nullptr, pattern ? a.stdv : nullptr, pattern ? a.channels : 1);
  const ChannelPattern<float>* pp = pattern ? &pat : nullptr;
  const int64_t blk = mix_block(a.channels, a.inner, M || SD);
  alignas(64) float ba[kMixBlock + kMaxPatternChannels], bb[kMixBlock + kMaxPatternChannels],
      bo[kMixBlock + kMaxPatternChannels];
  const bool half_in = in_kind == kElemF16 || in_kind == kElemBF16, half_out = out_kind != kElemF32;
  const int hin = in_kind == kElemBF16 ? lmx::kHalfBF16 : lmx::kHalfF16;
  const int hout = out_kind == kElemBF16 ? lmx::kHalfBF16 : lmx::kHalfF16;
  for (int64_t e = e0; e < e1; e += blk) {
    const int64_t end = std::min(e1, e + blk), n = end - e;
    float* po = half_out ? bo : static_cast<float*>(out) + e;
    if (in_kind == kElemU8) {
      mix_block_values<M, SD>(a, pp, static_cast<const uint8_t*>(xa) + e, static_cast<const uint8_t*>(xb) + e, po, e,
                              end, lam, oml);
    } else if (half_in) {
      lmx::half_to_float(hin, static_cast<const uint16_t*>(xa) + e, ba, n);
      lmx::half_to_float(hin, static_cast<const uint16_t*>(xb) + e, bb, n);
      mix_block_values<M, SD>(a, pp, static_cast<const float*>(ba), static_cast<const float*>(bb), po, e, end, lam,
                              oml);
    } else {
      mix_block_values<M, SD>(a, pp, static_cast<const float*>(xa) + e, static_cast<const float*>(xb) + e, po, e,
                              end, lam, oml);
    }
    if (half_out) lmx::float_to_half(hout, bo, static_cast<uint16_t*>(out) + e, n);
  }
}

int64_t elem_size(int kind) { return kind == kElemF32 ? 4 : kind == kElemU8 ? 1 : 2; }

void mix_f32(int in_kind, int out_kind, const MixArgs<float>& a, int64_t b, int64_t e0, int64_t e1) {
  int64_t c = a.index[b];
  if (c < 0 || c >= a.B) c = b;  // out-of-range partner (value checks off): mix with itself
  const char* x = static_cast<const char*>(a.x);
  const void* xa = x + b * a.P * elem_size(in_kind);
  const void* xb = x + c * a.P * elem_size(in_kind);
  void* o = static_cast<char*>(a.out) + b * a.P * elem_size(out_kind);
  const float lam = a.lam[b], oml = 1.0f - lam;
  const bool m = a.mean != nullptr, s = a.stdv != nullptr;
  if (m && s) mix_sample_kinds<true, true>(a, in_kind, out_kind, xa, xb, o, e0, e1, lam, oml);
  else if (m) mix_sample_kinds<true, false>(a, in_kind, out_kind, xa, xb, o, e0, e1, lam, oml);
  else if (s) mix_sample_kinds<false, true>(a, in_kind, out_kind, xa, xb, o, e0, e1, lam, oml);
  else mix_sample_kinds<false, false>(a, in_kind, out_kind, xa, xb, o, e0, e1, lam, oml);
}

template <class Tin, class Tm, class Tout>
void mix(const MixArgs<Tm>& a, int64_t b, int64_t e0, int64_t e1) {
  int64_t c = a.index[b];
  if (c < 0 || c >= a.B) c = b;  // out-of-range partner (value checks off): mix with itself
  const Tin* xa = static_cast<const Tin*>(a.x) + b * a.P;
  const Tin* xb = static_cast<const Tin*>(a.x) + c * a.P;
  Tout* o = static_cast<Tout*>(a.out) + b * a.P;
  const Tm lam = a.lam[b], oml = Tm(1) - lam;
  const bool m = a.mean != nullptr, s = a.stdv != nullptr;
  if (m && s) mix_sample<true, true>(a, xa, xb, o, e0, e1, lam, oml);
  else if (m) mix_sample<true, false>(a, xa, xb, o, e0, e1, lam, oml);
  else if (s) mix_sample<false, true>(a, xa, xb, o, e0, e1, lam, oml);
  else mix_sample<false, false>(a, xa, xb, o, e0, e1, lam, oml);
}

// acc (+)= f * (g * scale) / std over a span; PAT as in mix_span.
template <bool ACC, bool SD, bool PAT, class Tm>
void bwd_span(const Tm* __restrict g, Tm* __restrict acc, int64_t n, Tm f, Tm scale, const Tm* __restrict sp,
              int64_t period) {
  const Tm zero = Tm(0);
  if (!PAT) {
    const Tm sd = SD ? *sp : Tm(1);
    for (int64_t k = 0; k < n; ++k) {
      const Tm v = f * lmx::normalise(g[k], scale, zero, sd, false, SD);
      acc[k] = ACC ? acc[k] + v : v;
    }
  } else {
    for (int64_t base = 0; base < n; base += period) {
      const int64_t len = std::min(period, n - base);
      const Tm* __restrict pg = g + base;
      Tm* __restrict pd = acc + base;
      for (int64_t j = 0; j < len; ++j) {
        const Tm v = f * lmx::normalise(pg[j], scale, zero, sp[j], false, SD);
        pd[j] = ACC ? pd[j] + v : v;
      }
    }
  }
}

// acc[0, e1 - e0) (+)= f * k * g[0, e1 - e0) for one source sample, g pointing at its element e0.
template <bool ACC, class Tm>
void bwd_block(const MixBwdArgs<Tm>& a, const ChannelPattern<Tm>* pat, const Tm* g, Tm* acc, int64_t e0, int64_t e1,
               Tm f) {
  if (a.stdv == nullptr) {
    bwd_span<ACC, false, false>(g, acc, e1 - e0, f, a.scale, (const Tm*)nullptr, 1);
  } else if (a.inner > 1 || a.channels == 1) {
    channel_runs(e0, e1, a.inner, a.channels, [&](int64_t e, int64_t len, int64_t c) {
      bwd_span<ACC, true, false>(g + (e - e0), acc + (e - e0), len, f, a.scale, a.stdv + c, 1);
    });
  } else if (pat != nullptr) {
    bwd_span<ACC, true, true>(g, acc, e1 - e0, f, a.scale, pat->stdv, pat->period);
  } else {
    for (int64_t e = e0; e < e1; ++e)
      bwd_span<ACC, true, false>(g + (e - e0), acc + (e - e0), 1, f, a.scale, a.stdv + (e % a.channels), 1);
  }
}

// dx[t, e0:e1): lam_t g[t] plus (1 - lam_b) g[b] for each source b, accumulated in an L1 block
// in index_add_'s order, then stored once. HALF: grad and dx are float16 / bfloat16 (kind
// `hk`), each source block converted to float32 before it is accumulated.
template <class Tm, bool HALF>
void mix_bwd_impl(const MixBwdArgs<Tm>& a, int hk, int64_t t, int64_t e0, int64_t e1) {
  const bool pattern = a.stdv != nullptr && a.inner == 1 && a.channels > 1 && a.channels <= kMaxPatternChannels;
  ChannelPattern<Tm> pat(nullptr, pattern ? a.stdv : nullptr, pattern ? a.channels : 1);
  const ChannelPattern<Tm>* pp = pattern ? &pat : nullptr;
  const int64_t blk = mix_block(a.channels, a.inner, a.stdv != nullptr);
  alignas(64) Tm buf[kMixBlock + kMaxPatternChannels];
  alignas(64) Tm src[HALF ? kMixBlock + kMaxPatternChannels : 1];
  auto block = [&](int64_t b, int64_t e, int64_t n) -> const Tm* {  // source b's elements [e, e + n)
    if constexpr (HALF) {
      lmx::half_to_float(hk, static_cast<const uint16_t*>(a.grad) + b * a.P + e, src, n);
      return src;
    } else {
      return static_cast<const Tm*>(a.grad) + b * a.P + e;
    }
  };
  for (int64_t e = e0; e < e1; e += blk) {
    const int64_t end = std::min(e1, e + blk);
    bwd_block<false>(a, pp, block(t, e, end - e), buf, e, end, a.lam[t]);
    for (int64_t j = a.offsets[t]; j < a.offsets[t + 1]; ++j) {
      const int64_t b = a.sources[j];
      bwd_block<true>(a, pp, block(b, e, end - e), buf, e, end, Tm(1) - a.lam[b]);
    }
    if constexpr (HALF)
      lmx::float_to_half(hk, buf, static_cast<uint16_t*>(a.dx) + t * a.P + e, end - e);
    else
      std::memcpy(static_cast<Tm*>(a.dx) + t * a.P + e, buf, static_cast<size_t>(end - e) * sizeof(Tm));
  }
}

void mix_bwd_f32(int kind, const MixBwdArgs<float>& a, int64_t t, int64_t e0, int64_t e1) {
  if (kind == kElemF32) mix_bwd_impl<float, false>(a, 0, t, e0, e1);
  else mix_bwd_impl<float, true>(a, kind == kElemBF16 ? lmx::kHalfBF16 : lmx::kHalfF16, t, e0, e1);
}

void mix_bwd_f64(const MixBwdArgs<double>& a, int64_t t, int64_t e0, int64_t e1) {
  mix_bwd_impl<double, false>(a, 0, t, e0, e1);
}

template <class T>
void mix_pair(T* xb, T* xc, T lb, T lc, int64_t e0, int64_t e1) {
  T* __restrict pb = xb + e0;
  T* __restrict pc = xc + e0;
  const T omb = T(1) - lb, omc = T(1) - lc;
  const int64_t n = e1 - e0;
  for (int64_t k = 0; k < n; ++k) {
    const T u = pb[k], v = pc[k];
    pb[k] = lmx::mix_value(u, v, lb, omb);
    pc[k] = lmx::mix_value(v, u, lc, omc);
  }
}

// float16 / bfloat16 pairs: both samples' values converted to float32, mixed and converted back
// in registers (one read and one write of each, as the float32 kernel), the tail one by one.
void mix_pair_half(int kind, uint16_t* xb, uint16_t* xc, float lb, float lc, int64_t e0, int64_t e1) {
  const float omb = 1.0f - lb, omc = 1.0f - lc;
  uint16_t* pb = xb + e0;
  uint16_t* pc = xc + e0;
  const int64_t n = e1 - e0;
  int64_t k = 0;
#if LMX_VECTOR_EXT
  using lmx::vfloat;
  constexpr int W = lmx::kFloatLanes;
  const vfloat vlb = lmx::vsplat(lb), vomb = lmx::vsplat(omb), vlc = lmx::vsplat(lc), vomc = lmx::vsplat(omc);
  if (kind == kElemBF16) {
    for (; k + 2 * W <= n; k += 2 * W) {  // elementwise: the pair forms' lane order does not matter
      vfloat u0, u1, v0, v1;
      lmx::vbf16_load2(pb + k, u0, u1);
      lmx::vbf16_load2(pc + k, v0, v1);
      lmx::vbf16_store2(pb + k, lmx::mix_value(u0, v0, vlb, vomb), lmx::mix_value(u1, v1, vlb, vomb));
      lmx::vbf16_store2(pc + k, lmx::mix_value(v0, u0, vlc, vomc), lmx::mix_value(v1, u1, vlc, vomc));
    }
    for (; k + W <= n; k += W) {
      const vfloat u = lmx::vbf16_to_f32(pb + k), v = lmx::vbf16_to_f32(pc + k);
      lmx::vf32_to_bf16(pb + k, lmx::mix_value(u, v, vlb, vomb));
      lmx::vf32_to_bf16(pc + k, lmx::mix_value(v, u, vlc, vomc));
    }
  } else {
#ifdef LMX_F16C_AT_RUN_TIME
    if (lmx::cpu_has_f16c()) k = lmx::f16c_mix_pair(pb, pc, lb, omb, lc, omc, n);
#endif
    for (; k + W <= n; k += W) {
      const vfloat u = lmx::vf16_to_f32(pb + k), v = lmx::vf16_to_f32(pc + k);
      lmx::vf32_to_f16(pb + k, lmx::mix_value(u, v, vlb, vomb));
      lmx::vf32_to_f16(pc + k, lmx::mix_value(v, u, vlc, vomc));
    }
  }
#endif
  const bool bf = kind == kElemBF16;
  for (; k < n; ++k) {
    const float u = bf ? lmx::sbf16_to_f32(pb[k]) : lmx::sf16_to_f32(pb[k]);
    const float v = bf ? lmx::sbf16_to_f32(pc[k]) : lmx::sf16_to_f32(pc[k]);
    const float rb = lmx::mix_value(u, v, lb, omb), rc = lmx::mix_value(v, u, lc, omc);
    pb[k] = bf ? lmx::sf32_to_bf16(rb) : lmx::sf32_to_f16(rb);
    pc[k] = bf ? lmx::sf32_to_bf16(rc) : lmx::sf32_to_f16(rc);
  }
}

void half_to_float_fn(int kind, const uint16_t* src, float* dst, int64_t n) {
  lmx::half_to_float(kind == kElemBF16 ? lmx::kHalfBF16 : lmx::kHalfF16, src, dst, n);
}
void float_to_half_fn(int kind, const float* src, uint16_t* dst, int64_t n) {
  lmx::float_to_half(kind == kElemBF16 ? lmx::kHalfBF16 : lmx::kHalfF16, src, dst, n);
}
void scale_half(int kind, const uint16_t* src, uint16_t* dst, int64_t n, float s) {
  const int hk = kind == kElemBF16 ? lmx::kHalfBF16 : lmx::kHalfF16;
#if LMX_VECTOR_EXT
  if (kind == kElemBF16) {  // elementwise in registers (the pair forms' lane order does not matter)
    constexpr int W = lmx::kFloatLanes;
    const lmx::vfloat vs = lmx::vsplat(s);
    int64_t k = 0;
    for (; k + 2 * W <= n; k += 2 * W) {
      lmx::vfloat a, b;
      lmx::vbf16_load2(src + k, a, b);
      lmx::vbf16_store2(dst + k, a * vs, b * vs);
    }
    for (; k < n; ++k) dst[k] = lmx::sf32_to_bf16(lmx::sbf16_to_f32(src[k]) * s);
    return;
  }
#endif
  alignas(64) float buf[kMixBlock];
  for (int64_t e = 0; e < n; e += kMixBlock) {
    const int64_t len = std::min(n - e, kMixBlock);
    lmx::half_to_float(hk, src + e, buf, len);
    for (int64_t k = 0; k < len; ++k) buf[k] *= s;
    lmx::float_to_half(hk, buf, dst + e, len);
  }
}

}  // namespace

inline KernelTable make_table(const char* isa) {
  KernelTable t;
  t.isa = isa;
  t.seesaw_rows_f32 = &seesaw_rows<float>;
  t.seesaw_rows_f64 = &seesaw_rows<double>;
  t.seesaw_row_f32 = &seesaw_row<float>;
  t.seesaw_row_f64 = &seesaw_row<double>;
  t.scale_rows_f32 = &scale_rows<float>;
  t.scale_rows_f64 = &scale_rows<double>;
  t.mix_f32 = &mix_f32;
  t.mix_f64_f64 = &mix<double, double, double>;
  t.mix_bwd_f32 = &mix_bwd_f32;
  t.mix_bwd_f64 = &mix_bwd_f64;
  t.mix_pair_f32 = &mix_pair<float>;
  t.mix_pair_f64 = &mix_pair<double>;
  t.mix_pair_half = &mix_pair_half;
  t.half_to_float = &half_to_float_fn;
  t.float_to_half = &float_to_half_fn;
  t.scale_half = &scale_half;
  return t;
}

}  // namespace LMX_ISA_NS
}  // namespace lmx_cpu
