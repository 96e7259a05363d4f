// AVX2 + FMA (+ F16C) build of the CPU kernels (x86-64 with GCC or Clang). The instruction set is
// enabled for this file's kernel functions only (target pragma after the standard headers,
// whose inline functions therefore stay baseline); kernels_base.cpp calls get_table() only
// on CPUs that support AVX2, FMA and F16C (every AVX2 CPU has F16C).
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(LOSSMIX_NO_AVX2)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>
#include <limits>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#define LMX_ISA_NS avx2
#define LMX_FLOAT_LANES 8
#define LMX_F16C 1  // float16 <-> float32 with vcvtph2ps / vcvtps2ph
#include "kernels_impl.h"
#undef LMX_ISA_NS

namespace lmx_cpu {
namespace avx2 {
const KernelTable* get_table() {
  static const KernelTable t = make_table("avx2");
  return &t;
}
}  // namespace avx2
}  // namespace lmx_cpu

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else
#include "kernels.h"
namespace lmx_cpu {
namespace avx2 {
const KernelTable* get_table() { return nullptr; }
}  // namespace avx2
}  // namespace lmx_cpu
#endif
