// AVX2 + FMA build of the CPU kernels (x86-64 with GCC or Clang). The instruction set is
// enabled for this file's kernel functions only (target pragma after the standard headers,
// whose inline functions therefore stay baseline); kernels_base.cpp calls get_table() only
// on CPUs that support AVX2 and FMA.
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(LOSSMIX_NO_AVX2)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>
#include <limits>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#define LMX_ISA_NS avx2
#define LMX_FLOAT_LANES 8
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
