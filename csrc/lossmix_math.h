// Kernel maths shared by the CPU kernels (csrc/cpu) and the CUDA kernels (csrc/cuda).
//
// Everything here is a small inline function template over a "value" type V, which is
// float or double on the GPU and in scalar CPU code, and a SIMD vector of floats in the
// vectorised CPU loops. A V only needs + - * and the helpers lmx_max / lmx_min (and
// lmx_exp where noted); the scalar helpers are defined below, the CPU vector ones are
// declared by csrc/cpu/simd.h before this header is included. The functions have internal
// linkage (static) so that translation units compiled for different instruction sets never
// share a copy. Plain C++ compilers see no CUDA keyword (LMX_HD expands to nothing).
//
// Seesaw loss (mmdetection semantics), for a row z of C class logits and label j:
//   mitigation    log M_jk = p * min(0, log N_k - log N_j)              (counts N clamped >= 1)
//   compensation  log C_jk = q * max(0, log s_k - log max(s_j, eps)),  s = softmax(z)
//                          = q * max(0, z_k - T_j),  T_j = max(z_j, lse(z) + log eps)
//   modified logit z'_k    = z_k + log M_jk + log C_jk   (both terms are exactly 0 at k = j)
//                            (computed as y'_k = z'_k - m with y = z - m, m the row max)
//   loss = lse(z') - z_j,   d loss / d z = softmax(z') - onehot(j)      (s is detached)
// Mixed / two-label rows add these per label set s with weights w_s.
#ifndef LOSSMIX_MATH_H_
#define LOSSMIX_MATH_H_

#if defined(__CUDACC__)
#define LMX_HD __host__ __device__ __forceinline__
#define LMX_FN static __host__ __device__ __forceinline__
#else
#define LMX_HD inline
#define LMX_FN static inline
#endif

namespace lmx {

// ----------------------------------------------------------------------------- scalar helpers
LMX_FN float lmx_max(float a, float b) { return a > b ? a : b; }
LMX_FN float lmx_min(float a, float b) { return a < b ? a : b; }
LMX_FN double lmx_max(double a, double b) { return a > b ? a : b; }
LMX_FN double lmx_min(double a, double b) { return a < b ? a : b; }

// ----------------------------------------------------------------------------- seesaw maths
// log of a per-class count as used by the mitigation factor (counts clamped to >= 1).
template <class S>
LMX_FN S log_count_arg(S count) { return count < S(1) ? S(1) : count; }

// The compensation threshold T_j = max(z_j, lse(z) + log eps): class k is compensated
// (its logit raised by q * (z_k - T_j)) exactly when z_k > T_j. Valid in any shifted
// coordinates y = z - c (pass y_j and lse(y)); the kernels shift by the row max so that
// the modified logits near the top of a row are exact even for logits of magnitude 1e4.
template <class S>
LMX_FN S compensation_threshold(S y_label, S lse_y, S log_eps) {
  return lmx_max(y_label, lse_y + log_eps);
}

// The modified logit z'_k of one class column (or a vector of columns). All arguments of
// type V are values or broadcast scalars; `zero` is a zero V. use_p / use_q switch the
// mitigation / compensation terms on.
template <class V>
LMX_FN V seesaw_modified_logit(V z, V log_count_k, V log_count_j, V p, V threshold, V q, V zero,
                               bool use_p, bool use_q) {
  V r = z;
  if (use_p) r = r + p * lmx_min(log_count_k - log_count_j, zero);
  if (use_q) r = r + q * lmx_max(z - threshold, zero);
  return r;
}

// exp(y'_k) of a shifted modified logit from e_k = exp(y_k), without another exponential:
//   mitigation   exp(p·min(0, log N_k − log N_j)) = min(1, a_k·b_j),
//                a_k = exp(p·(log N_k − L)), b_j = exp(p·(L − log N_j)), L = the largest log count;
//   compensation exp(q·max(0, y_k − T_j)) = max(1, e_k·c_j)^q,  c_j = exp(−T_j), for q in {1, 2}.
// The label's column gets factors 1 (up to rounding). q_int = 0 switches compensation off.
template <class V>
LMX_FN V seesaw_modified_exp(V e, V a_k, V b_j, V c_j, V one, bool use_p, int q_int) {
  V r = e;
  if (use_p) r = r * lmx_min(a_k * b_j, one);
  if (q_int >= 1) {
    const V t = lmx_max(e * c_j, one);
    r = r * (q_int == 2 ? t * t : t);
  }
  return r;
}

// Online softmax state: m = running max, s = sum of exp(x - m). Merging two states is exact
// up to rounding; an empty state is (-inf, 0). `expf_` is the exponential to use (a functor,
// so the CPU and GPU can pass their own).
template <class S, class Exp>
LMX_FN void softmax_merge(S& m, S& s, S m2, S s2, Exp expf_) {
  if (m2 > m) {
    s = s * expf_(m - m2) + s2;  // exp(-inf) = 0 handles an empty left state
    m = m2;
  } else if (s2 != S(0)) {
    s = s + s2 * expf_(m2 - m);
  }
}

// One element x added to an online softmax state.
template <class S, class Exp>
LMX_FN void softmax_update(S& m, S& s, S x, Exp expf_) {
  if (x > m) {
    s = s * expf_(m - x) + S(1);
    m = x;
  } else {
    s = s + expf_(x - m);
  }
}

// The gradient of a (mixed) row in one class column, given each label set's softmax
// probability of that column (p0, p1) and per-set factors (weights; 0 for an inactive set):
//   g = w0 * (p0 - [k == j0]) + w1 * (p1 - [k == j1])
// The label terms are applied separately (they touch one column each), so this is the
// dense part; written once here so that CPU and GPU accumulate in the same order.
template <class V>
LMX_FN V mixed_grad(V p0, V w0, V p1, V w1) { return w0 * p0 + w1 * p1; }

// A label set contributes a class loss in a row when its label is a class column and not
// the ignored label (the background label C, and anything out of range, contribute nothing).
LMX_FN bool label_active(long long label, long long num_classes, bool has_ignore, long long ignore_index) {
  return label >= 0 && label < num_classes && !(has_ignore && label == ignore_index);
}

// Two-class (objectness) cross-entropy over logits (o0, o1) with target t in {0, 1}:
// loss = lse(o) - o_t, grad = softmax(o) - onehot(t). `expf_`/`logf_` as above.
template <class S, class Exp, class Log>
LMX_FN void objectness_ce(S o0, S o1, bool target_bg, S* loss, S* g0, S* g1, Exp expf_, Log logf_) {
  const S m = lmx_max(o0, o1);
  const S e0 = expf_(o0 - m), e1 = expf_(o1 - m);
  const S sum = e0 + e1;
  *loss = (m - (target_bg ? o1 : o0)) + logf_(sum);  // lse(o) - o_t without rounding lse
  *g0 = e0 / sum - (target_bg ? S(0) : S(1));
  *g1 = e1 / sum - (target_bg ? S(1) : S(0));
}

// ----------------------------------------------------------------------------- image mixing
// v(x) = (x * scale - mean) / std, written as the reference computes it.
template <class V>
LMX_FN V normalise(V x, V scale, V mean, V stdv, bool use_mean, bool use_std) {
  V v = x * scale;
  if (use_mean) v = v - mean;
  if (use_std) v = v / stdv;
  return v;
}

// lam * a + (1 - lam) * b with one_minus_lam = 1 - lam computed once.
template <class V>
LMX_FN V mix_value(V a, V b, V lam, V one_minus_lam) { return lam * a + one_minus_lam * b; }

}  // namespace lmx

#endif  // LOSSMIX_MATH_H_
