// Portable SIMD values for the CPU kernels: GCC/Clang vector extensions, 8 floats in the
// translation unit compiled for AVX2 (kernels_avx2.cpp, LMX_FLOAT_LANES=8) and 4 floats (SSE2
// or NEON registers) in the baseline one. Other compilers get one lane.
//
// Defines, in namespace lmx, the helpers the templates of lossmix_math.h call for vectors
// (lmx_max, lmx_min) plus loads, stores, broadcasts, horizontal reductions and a fast
// vectorisable exp (Cephes' expf polynomial, about 1 ulp on [-87, 88], exactly 0 below
// -88). Include this header before lossmix_math.h. Everything has internal linkage.
#ifndef LOSSMIX_CPU_SIMD_H_
#define LOSSMIX_CPU_SIMD_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if (defined(__GNUC__) || defined(__clang__)) && !defined(LOSSMIX_NO_VECTOR_EXT)
#define LMX_VECTOR_EXT 1
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LMX_X86_MINMAX 1
#endif
#endif

namespace lmx {

// Lanes per vector: 8 (256-bit) where the including file enables AVX2, else 4 (128-bit).
#ifndef LMX_FLOAT_LANES
#define LMX_FLOAT_LANES 4
#endif

#if LMX_VECTOR_EXT
constexpr int kFloatLanes = LMX_FLOAT_LANES;
typedef float vfloat __attribute__((vector_size(4 * LMX_FLOAT_LANES)));
typedef int32_t vint __attribute__((vector_size(4 * LMX_FLOAT_LANES)));

static inline vfloat vsplat(float s) {
  vfloat v;
  for (int i = 0; i < kFloatLanes; ++i) v[i] = s;
  return v;
}
static inline vfloat vload(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
static inline void vstore(float* p, vfloat v) { std::memcpy(p, &v, sizeof v); }
static inline vfloat vselect(vint mask, vfloat a, vfloat b) {
  return (vfloat)((mask & (vint)a) | (~mask & (vint)b));
}
// max / min with the semantics of `a > b ? a : b` / `a < b ? a : b` (b when either is NaN or
// both are equal): exactly those of x86's maxps / minps, which compilers do not always pick
// for the vector conditional (GCC emits compare + blend), so they are used directly there.
#if defined(LMX_X86_MINMAX) && LMX_FLOAT_LANES == 8
static inline vfloat lmx_max(vfloat a, vfloat b) { return (vfloat)_mm256_max_ps((__m256)a, (__m256)b); }
static inline vfloat lmx_min(vfloat a, vfloat b) { return (vfloat)_mm256_min_ps((__m256)a, (__m256)b); }
#elif defined(LMX_X86_MINMAX) && LMX_FLOAT_LANES == 4
static inline vfloat lmx_max(vfloat a, vfloat b) { return (vfloat)_mm_max_ps((__m128)a, (__m128)b); }
static inline vfloat lmx_min(vfloat a, vfloat b) { return (vfloat)_mm_min_ps((__m128)a, (__m128)b); }
#elif defined(__clang__)
static inline vfloat lmx_max(vfloat a, vfloat b) { return vselect(a > b, a, b); }
static inline vfloat lmx_min(vfloat a, vfloat b) { return vselect(a < b, a, b); }
#else
static inline vfloat lmx_max(vfloat a, vfloat b) { return a > b ? a : b; }
static inline vfloat lmx_min(vfloat a, vfloat b) { return a < b ? a : b; }
#endif
static inline float vhmax(vfloat v) {
  float r = v[0];
  for (int i = 1; i < kFloatLanes; ++i) r = v[i] > r ? v[i] : r;
  return r;
}
static inline float vhsum(vfloat v) {
  // pairwise, in a fixed order
  float t[kFloatLanes];
  vstore(t, v);
  for (int w = kFloatLanes / 2; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) t[i] += t[i + w];
  return t[0];
}
#else
constexpr int kFloatLanes = 1;
typedef float vfloat;
typedef int32_t vint;
static inline vfloat vsplat(float s) { return s; }
static inline vfloat vload(const float* p) { return *p; }
static inline void vstore(float* p, vfloat v) { *p = v; }
static inline float vhmax(vfloat v) { return v; }
static inline float vhsum(vfloat v) { return v; }
#endif

// Partial loads / stores for row tails (n < kFloatLanes), padding with `fill`.
static inline vfloat vload_partial(const float* p, int64_t n, float fill) {
  float tmp[kFloatLanes];
  for (int i = 0; i < kFloatLanes; ++i) tmp[i] = i < n ? p[i] : fill;
  return vload(tmp);
}
static inline void vstore_partial(float* p, vfloat v, int64_t n) {
  float tmp[kFloatLanes];
  vstore(tmp, v);
  for (int64_t i = 0; i < n; ++i) p[i] = tmp[i];
}

// e^r for r = x - n ln2 (two-step Cody-Waite reduction), n = round(x / ln2): the part of exp
// shared by vexp and sexp, V = float or vfloat, so that both round identically.
template <class V>
static inline V exp_reduced(V x, V n) {
  V r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V y = r * 1.9875691500E-4f + 1.3981999507E-3f;
  y = y * r + 8.3334519073E-3f;
  y = y * r + 4.1665795894E-2f;
  y = y * r + 1.6666665459E-1f;
  y = y * r + 5.0000001201E-1f;
  return y * (r * r) + r + 1.0f;
}

// exp for float vectors: round-to-nearest range reduction x = n ln2 + r (|r| <= ln2 / 2),
// Cephes' degree-6 polynomial for e^r, 2^n assembled in the exponent bits. Inputs are
// clamped to [-88, 88]; below about -87.3 the result is 0 (n = -127 gives a zero exponent).
// NaN in, NaN out (the clamp keeps NaN; the polynomial then carries it).
#if LMX_VECTOR_EXT
static inline vfloat vexp(vfloat x) {
  const vfloat magic = vsplat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  // Clamp with the constant first: lmx_min / lmx_max return their second operand when either is
  // NaN, so a NaN input stays NaN (and so does the result) instead of becoming e^±88.
  x = lmx_min(vsplat(88.0f), x);
  x = lmx_max(vsplat(-88.0f), x);
  vfloat t = x * 1.44269504088896341f + magic;
  const vfloat y = exp_reduced(x, t - magic);
  vint ni = (vint)t - (vint)magic;
  vfloat pow2 = (vfloat)((ni + 127) << 23);
  return y * pow2;
}
#endif

// The same function on one float (bit-identical to a lane of vexp).
static inline float sexp(float x) {
  const float magic = 12582912.0f;
  x = 88.0f < x ? 88.0f : x;  // NaN stays NaN, as in vexp
  x = -88.0f > x ? -88.0f : x;
  float t = x * 1.44269504088896341f + magic;
  const float y = exp_reduced(x, t - magic);
  int32_t ti, mi;
  std::memcpy(&ti, &t, 4);
  std::memcpy(&mi, &magic, 4);
  int32_t bits = ((ti - mi) + 127) << 23;
  float pow2;
  std::memcpy(&pow2, &bits, 4);
  return y * pow2;
}

#if !LMX_VECTOR_EXT
static inline vfloat vexp(vfloat x) { return sexp(x); }
#endif

}  // namespace lmx

#endif  // LOSSMIX_CPU_SIMD_H_
