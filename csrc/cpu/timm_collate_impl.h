// The row functions of timm_collate.cpp, compiled twice (baseline and AVX2) by including this
// file in two namespaces (LMX_TIMM_NS; LMX_TIMM_AVX2_INTRINSICS selects the AVX2 mixing loop).
// No fused multiply-add: the AVX2 instance is built without FMA, and contraction is off in both.
#include <cstdint>
#include <cstring>

namespace lmx_timm {
namespace LMX_TIMM_NS {

// Adding and subtracting 1.5 * 2^23 rounds a float in [0, 2^22) to an integer, half to even (the
// default rounding mode), in two vectorisable additions.
constexpr float kRoundHalfEven = 12582912.0f;

inline void mix_span(const uint8_t* a, const uint8_t* b, uint8_t* o, int64_t n, float lam, float oml) {
  if (n <= 0) return;
  if (lam == 1.0f) {
    std::memcpy(o, a, static_cast<size_t>(n));
    return;
  }
  int64_t k = 0;
#if LMX_TIMM_AVX2_INTRINSICS
  // 16 values per step: widen to float32, the two products and their sum (mul, mul, add: no
  // FMA in this instance), convert with round-half-to-even (the default MXCSR mode), narrow
  const __m256 vl = _mm256_set1_ps(lam), vm = _mm256_set1_ps(oml);
  for (; k + 16 <= n; k += 16) {
    const __m128i a16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + k));
    const __m128i b16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + k));
    const __m256 a0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(a16));
    const __m256 a1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(a16, 8)));
    const __m256 b0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b16));
    const __m256 b1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(b16, 8)));
    const __m256i r0 = _mm256_cvtps_epi32(_mm256_add_ps(_mm256_mul_ps(a0, vl), _mm256_mul_ps(b0, vm)));
    const __m256i r1 = _mm256_cvtps_epi32(_mm256_add_ps(_mm256_mul_ps(a1, vl), _mm256_mul_ps(b1, vm)));
    // (r0 | r1) as 16-bit, lanes reordered, then bytes
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(r0, r1), 0xD8);
    const __m128i bytes = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + k), bytes);
  }
#endif
  for (; k < n; ++k) {
    const float pa = static_cast<float>(a[k]) * lam;
    const float pb = static_cast<float>(b[k]) * oml;
    const float v = pa + pb;
    const float r = (v + kRoundHalfEven) - kRoundHalfEven;
    o[k] = static_cast<uint8_t>(static_cast<int32_t>(r));
  }
}

// One row of `len` values in memory order, whose box part (if this row crosses the box) is the
// element range [k0, k1): own / mixed values outside it, the partner's inside.
inline void row_values(const uint8_t* a, const uint8_t* b, uint8_t* o, int64_t len, int64_t k0, int64_t k1, float lam,
                float oml) {
  if (k0 >= k1) {
    mix_span(a, b, o, len, lam, oml);
    return;
  }
  mix_span(a, b, o, k0, lam, oml);
  std::memcpy(o + k0, b + k0, static_cast<size_t>(k1 - k0));
  mix_span(a + k1, b + k1, o + k1, len - k1, lam, oml);
}

// s: one image row, W pixels of C interleaved channels; o: that row in plane 0 of a (C, H, W)
// sample (plane c at o + c * HW). Three planes (RGB) in one pass over s.
inline void deinterleave(const uint8_t* s, uint8_t* o, int64_t C, int64_t W, int64_t HW) {
  if (C == 3) {
    uint8_t* __restrict o0 = o;
    uint8_t* __restrict o1 = o + HW;
    uint8_t* __restrict o2 = o + 2 * HW;
    for (int64_t xx = 0; xx < W; ++xx) {
      o0[xx] = s[3 * xx];
      o1[xx] = s[3 * xx + 1];
      o2[xx] = s[3 * xx + 2];
    }
    return;
  }
  for (int64_t c = 0; c < C; ++c) {
    uint8_t* __restrict oc = o + c * HW;
    for (int64_t xx = 0; xx < W; ++xx) oc[xx] = s[xx * C + c];
  }
}

}  // namespace LMX_TIMM_NS
}  // namespace lmx_timm
