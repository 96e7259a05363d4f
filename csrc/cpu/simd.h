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

// ----------------------------------------------------------------------------- half precision
// float16 / bfloat16 <-> float32 on raw 16-bit patterns, with the rounding of PyTorch's own
// conversions (c10::Half, c10::BFloat16): round to nearest even, overflow to infinity, NaN stays
// NaN. Scalar forms (one value, bit-identical to the vector forms) and vector forms of
// kFloatLanes values: integer lane arithmetic (the "bf16 shifts", and float16 rebuilt from its
// fields), or the F16C instructions where the including file enables them (LMX_F16C).
enum HalfKind : int { kHalfF16 = 0, kHalfBF16 = 1 };

static inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

static inline float sbf16_to_f32(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }
static inline uint16_t sf32_to_bf16(float f) {
  if (f != f) return 0x7FC0;
  const uint32_t u = float_bits(f);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
// float16 fields moved into a float32: exponent rebased by 112 (normals), by 224 for Inf/NaN,
// subnormals renormalised with one float subtraction.
static inline float sf16_to_f32(uint16_t h) {
  uint32_t o = (static_cast<uint32_t>(h) & 0x7FFFu) << 13;
  const uint32_t e = o & (0x7C00u << 13);
  o += (127u - 15u) << 23;
  if (e == (0x7C00u << 13)) {
    o += (128u - 16u) << 23;
  } else if (e == 0) {
    o += 1u << 23;
    o = float_bits(bits_float(o) - bits_float(113u << 23));
  }
  return bits_float(o | ((static_cast<uint32_t>(h) & 0x8000u) << 16));
}
static inline uint16_t sf32_to_f16(float f) {
  uint32_t u = float_bits(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint32_t o;
  if (u >= (143u << 23)) {  // |f| >= 65536 (rounds to Inf), Inf, NaN
    o = u > 0x7F800000u ? 0x7E00u : 0x7C00u;
  } else if (u < (113u << 23)) {  // a float16 subnormal or zero: add 0.5 to align the 10 mantissa bits
    o = float_bits(bits_float(u) + 0.5f) - (126u << 23);
  } else {  // normal: rebase the exponent, round to nearest even on the 13 dropped bits
    o = (u + 0xC8000FFFu + ((u >> 13) & 1u)) >> 13;  // 0xC8000FFF = ((15 - 127) << 23) + 0xFFF
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

#if LMX_VECTOR_EXT
typedef uint32_t vuint __attribute__((vector_size(4 * LMX_FLOAT_LANES)));
typedef uint16_t vhalf __attribute__((vector_size(2 * LMX_FLOAT_LANES)));

static inline vuint vload_h(const uint16_t* p) {
  vhalf h;
  std::memcpy(&h, p, sizeof h);
  return __builtin_convertvector(h, vuint);
}
static inline void vstore_h(uint16_t* p, vuint v) {  // lanes hold values < 2^16
#if defined(LMX_X86_MINMAX) && LMX_FLOAT_LANES == 8
  // vpackusdw packs the 128-bit halves side by side: pack with itself, keep the 64-bit pieces 0 and 2
  const __m256i w = _mm256_packus_epi32((__m256i)v, (__m256i)v);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(_mm256_permute4x64_epi64(w, 0x08)));
#elif defined(LMX_X86_MINMAX) && LMX_FLOAT_LANES == 4
  // SSE2 has only the signed pack: shift the values into its range and back
  const __m128i b = _mm_sub_epi32((__m128i)v, _mm_set1_epi32(0x8000));
  const __m128i w = _mm_add_epi16(_mm_packs_epi32(b, b), _mm_set1_epi16(static_cast<short>(0x8000)));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), w);
#else
  const vhalf h = __builtin_convertvector(v, vhalf);
  std::memcpy(p, &h, sizeof h);
#endif
}
#if defined(LMX_X86_MINMAX)
// x86: a bfloat16 is the high half of a float32, so a load interleaves the 16-bit patterns with
// zeros (punpcklwd), and a store rounds, shifts arithmetically (the result then fits the signed
// 16-bit range exactly) and packs with packssdw: no zero-extension, no range shift.
static inline __m128i bf16_round_shift(__m128i u) {  // (u + 0x7FFF + lsb) >> 16, sign-extended
  const __m128i lsb = _mm_and_si128(_mm_srli_epi32(u, 16), _mm_set1_epi32(1));
  return _mm_srai_epi32(_mm_add_epi32(u, _mm_add_epi32(lsb, _mm_set1_epi32(0x7FFF))), 16);
}
static inline __m128i bf16_fix_nan(__m128i packed, __m128i nan16) {  // NaN lanes -> 0x7FC0
  return _mm_or_si128(_mm_andnot_si128(nan16, packed), _mm_and_si128(nan16, _mm_set1_epi16(0x7FC0)));
}
#endif
#if defined(LMX_X86_MINMAX) && LMX_FLOAT_LANES == 4
static inline vfloat vbf16_to_f32(const uint16_t* p) {
  return (vfloat)_mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
static inline void vf32_to_bf16(uint16_t* p, vfloat f) {
  const __m128i nan = _mm_castps_si128(_mm_cmpunord_ps((__m128)f, (__m128)f));
  const __m128i r = bf16_round_shift((__m128i)f);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), bf16_fix_nan(_mm_packs_epi32(r, r), _mm_packs_epi32(nan, nan)));
}
// Two vectors (8 values) per call, in order: one 128-bit load or store.
constexpr bool kBf16PairInOrder = true;
static inline void vbf16_load2(const uint16_t* p, vfloat& a, vfloat& b) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), z = _mm_setzero_si128();
  a = (vfloat)_mm_unpacklo_epi16(z, h);
  b = (vfloat)_mm_unpackhi_epi16(z, h);
}
static inline void vbf16_store2(uint16_t* p, vfloat a, vfloat b) {
  const __m128i nan = _mm_packs_epi32(_mm_castps_si128(_mm_cmpunord_ps((__m128)a, (__m128)a)),
                                      _mm_castps_si128(_mm_cmpunord_ps((__m128)b, (__m128)b)));
  const __m128i r = _mm_packs_epi32(bf16_round_shift((__m128i)a), bf16_round_shift((__m128i)b));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), bf16_fix_nan(r, nan));
}
#else
static inline vfloat vbf16_to_f32(const uint16_t* p) { return (vfloat)(vload_h(p) << 16); }
static inline void vf32_to_bf16(uint16_t* p, vfloat f) {
  const vuint u = (vuint)f;
  const vuint r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  vstore_h(p, (vuint)vselect(f != f, (vfloat)(r * 0u + 0x7FC0u), (vfloat)r));
}
#if defined(LMX_X86_MINMAX) && LMX_FLOAT_LANES == 8
// AVX2: 16 values per call with one 256-bit load or store. vpunpck{l,h}wd and vpackssdw work within
// 128-bit halves, so the two vectors hold the values permuted ([0-3, 8-11] and [4-7, 12-15]), and
// the store undoes exactly that: for elementwise work on values loaded the same way only.
constexpr bool kBf16PairInOrder = false;
static inline void vbf16_load2(const uint16_t* p, vfloat& a, vfloat& b) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), z = _mm256_setzero_si256();
  a = (vfloat)_mm256_unpacklo_epi16(z, h);
  b = (vfloat)_mm256_unpackhi_epi16(z, h);
}
static inline __m256i bf16_round_shift8(__m256i u) {
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  return _mm256_srai_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
}
static inline void vbf16_store2(uint16_t* p, vfloat a, vfloat b) {
  const __m256i nan = _mm256_packs_epi32(_mm256_castps_si256(_mm256_cmp_ps((__m256)a, (__m256)a, _CMP_UNORD_Q)),
                                         _mm256_castps_si256(_mm256_cmp_ps((__m256)b, (__m256)b, _CMP_UNORD_Q)));
  const __m256i r = _mm256_packs_epi32(bf16_round_shift8((__m256i)a), bf16_round_shift8((__m256i)b));
  const __m256i out = _mm256_or_si256(_mm256_andnot_si256(nan, r), _mm256_and_si256(nan, _mm256_set1_epi16(0x7FC0)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), out);
}
#else
constexpr bool kBf16PairInOrder = true;
static inline void vbf16_load2(const uint16_t* p, vfloat& a, vfloat& b) {
  a = vbf16_to_f32(p);
  b = vbf16_to_f32(p + kFloatLanes);
}
static inline void vbf16_store2(uint16_t* p, vfloat a, vfloat b) {
  vf32_to_bf16(p, a);
  vf32_to_bf16(p + kFloatLanes, b);
}
#endif
#endif
#if defined(LMX_F16C) && LMX_FLOAT_LANES == 8
static inline vfloat vf16_to_f32(const uint16_t* p) {
  return (vfloat)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
static inline void vf32_to_f16(uint16_t* p, vfloat f) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph((__m256)f, _MM_FROUND_TO_NEAREST_INT));
}
#else
static inline vfloat vf16_to_f32(const uint16_t* p) {
  const vuint h = vload_h(p);
  vuint o = (h & 0x7FFFu) << 13;
  const vuint e = o & (0x7C00u << 13);
  o += (127u - 15u) << 23;
  const vint infnan = (vint)(e == (0x7C00u << 13)), sub = (vint)(e == 0u);
  o += (vuint)infnan & ((128u - 16u) << 23);
  const vfloat renorm = (vfloat)(o + (1u << 23)) - bits_float(113u << 23);
  o = (vuint)vselect(sub, renorm, (vfloat)o);
  return (vfloat)(o | ((h & 0x8000u) << 16));
}
static inline void vf32_to_f16(uint16_t* p, vfloat f) {
  vuint u = (vuint)f;
  const vuint sign = u & 0x80000000u;
  u ^= sign;
  const vuint special = (vuint)vselect((vint)(u > 0x7F800000u), (vfloat)(u * 0u + 0x7E00u), (vfloat)(u * 0u + 0x7C00u));
  const vuint sub = (vuint)((vfloat)u + 0.5f) - (126u << 23);
  const vuint norm = (u + 0xC8000FFFu + ((u >> 13) & 1u)) >> 13;
  vuint o = (vuint)vselect((vint)(u < (113u << 23)), (vfloat)sub, (vfloat)norm);
  o = (vuint)vselect((vint)(u >= (143u << 23)), (vfloat)special, (vfloat)o);
  vstore_h(p, o | (sign >> 16));
}
#endif
#endif

// kFloatLanes bytes -> float32 (GCC scalarises __builtin_convertvector from uint8 vectors on x86,
// one cvtsi2ss per byte: the explicit zero-extension instead).
#if LMX_VECTOR_EXT
static inline vfloat vload_u8(const uint8_t* p) {
#if defined(LMX_X86_MINMAX) && LMX_FLOAT_LANES == 8
  return (vfloat)_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#elif defined(LMX_X86_MINMAX) && LMX_FLOAT_LANES == 4
  int32_t w;
  std::memcpy(&w, p, 4);
  const __m128i z = _mm_setzero_si128();
  return (vfloat)_mm_cvtepi32_ps(_mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(w), z), z));
#else
  typedef uint8_t vu8 __attribute__((vector_size(kFloatLanes)));
  vu8 u;
  std::memcpy(&u, p, sizeof u);
  return __builtin_convertvector(__builtin_convertvector(u, vint), vfloat);
#endif
}
#endif

// The 128-bit build on x86-64 (SSE2 only by default): float16 arrays through F16C's 4-lane forms
// when the CPU has it (checked once at run time; nearly every x86-64 CPU since 2012), the
// integer lane arithmetic above otherwise.
#if LMX_VECTOR_EXT && defined(LMX_X86_MINMAX) && LMX_FLOAT_LANES == 4 && !defined(LMX_F16C)
#define LMX_F16C_AT_RUN_TIME 1
static inline bool cpu_has_f16c() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("f16c") != 0;
  }();
  return has;
}
__attribute__((target("f16c"))) static inline int64_t f16c_to_float(const uint16_t* src, float* dst, int64_t n) {
  int64_t k = 0;
  for (; k + 4 <= n; k += 4)
    _mm_storeu_ps(dst + k, _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + k))));
  return k;
}
__attribute__((target("f16c"))) static inline int64_t f16c_from_float(const float* src, uint16_t* dst, int64_t n) {
  int64_t k = 0;
  for (; k + 4 <= n; k += 4)
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + k), _mm_cvtps_ph(_mm_loadu_ps(src + k), _MM_FROUND_TO_NEAREST_INT));
  return k;
}
#endif

#ifdef LMX_F16C_AT_RUN_TIME
// mix_images_'s pair step on float16 values with F16C's 4-lane forms (the values stay in
// registers between the conversions); returns how many elements it did (a multiple of 4).
__attribute__((target("f16c"))) static inline int64_t f16c_mix_pair(uint16_t* xb, uint16_t* xc, float lb, float omb,
                                                                    float lc, float omc, int64_t n) {
  const __m128 vlb = _mm_set1_ps(lb), vomb = _mm_set1_ps(omb), vlc = _mm_set1_ps(lc), vomc = _mm_set1_ps(omc);
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    __m128i* pb = reinterpret_cast<__m128i*>(xb + k);
    __m128i* pc = reinterpret_cast<__m128i*>(xc + k);
    const __m128 u = _mm_cvtph_ps(_mm_loadl_epi64(pb)), v = _mm_cvtph_ps(_mm_loadl_epi64(pc));
    const __m128 rb = _mm_add_ps(_mm_mul_ps(vlb, u), _mm_mul_ps(vomb, v));
    const __m128 rc = _mm_add_ps(_mm_mul_ps(vlc, v), _mm_mul_ps(vomc, u));
    _mm_storel_epi64(pb, _mm_cvtps_ph(rb, _MM_FROUND_TO_NEAREST_INT));
    _mm_storel_epi64(pc, _mm_cvtps_ph(rc, _MM_FROUND_TO_NEAREST_INT));
  }
  return k;
}
#endif

// n values: 16-bit patterns of `kind` <-> float32 (vectorised, scalar tail).
static inline void half_to_float(int kind, const uint16_t* src, float* dst, int64_t n) {
  int64_t k = 0;
#if LMX_VECTOR_EXT
  if (kind == kHalfBF16) {
    if (kBf16PairInOrder) {
      for (; k + 2 * kFloatLanes <= n; k += 2 * kFloatLanes) {
        vfloat a, b;
        vbf16_load2(src + k, a, b);
        vstore(dst + k, a);
        vstore(dst + k + kFloatLanes, b);
      }
    }
    for (; k + kFloatLanes <= n; k += kFloatLanes) vstore(dst + k, vbf16_to_f32(src + k));
  } else {
#ifdef LMX_F16C_AT_RUN_TIME
    if (cpu_has_f16c()) k = f16c_to_float(src, dst, n);
#endif
    for (; k + kFloatLanes <= n; k += kFloatLanes) vstore(dst + k, vf16_to_f32(src + k));
  }
#endif
  for (; k < n; ++k) dst[k] = kind == kHalfBF16 ? sbf16_to_f32(src[k]) : sf16_to_f32(src[k]);
}
static inline void float_to_half(int kind, const float* src, uint16_t* dst, int64_t n) {
  int64_t k = 0;
#if LMX_VECTOR_EXT
  if (kind == kHalfBF16) {
    if (kBf16PairInOrder) {
      for (; k + 2 * kFloatLanes <= n; k += 2 * kFloatLanes)
        vbf16_store2(dst + k, vload(src + k), vload(src + k + kFloatLanes));
    }
    for (; k + kFloatLanes <= n; k += kFloatLanes) vf32_to_bf16(dst + k, vload(src + k));
  } else {
#ifdef LMX_F16C_AT_RUN_TIME
    if (cpu_has_f16c()) k = f16c_from_float(src, dst, n);
#endif
    for (; k + kFloatLanes <= n; k += kFloatLanes) vf32_to_f16(dst + k, vload(src + k));
  }
#endif
  for (; k < n; ++k) dst[k] = kind == kHalfBF16 ? sf32_to_bf16(src[k]) : sf32_to_f16(src[k]);
}

}  // namespace lmx

#endif  // LOSSMIX_CPU_SIMD_H_
