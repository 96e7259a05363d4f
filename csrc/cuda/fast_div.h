// 32-bit unsigned division by a run-time constant, as a multiply-high, an add and a shift
// (Granlund & Montgomery's round-up method): the mix kernels split an element's index in its
// sample into channel / row / column with it instead of 64-bit `/` and `%` (a ~70-instruction
// subroutine each on NVIDIA GPUs). Exact for every dividend n < 2^31 and divisor 1 <= d < 2^31;
// the kernels use it only when a sample has fewer than 2^31 elements (mix.cu keeps a 64-bit
// instance for larger samples). Host-compilable (the magic number is built on the host, and a
// CPU test checks div / mod against plain division).
#ifndef LOSSMIX_CUDA_FAST_DIV_H_
#define LOSSMIX_CUDA_FAST_DIV_H_

#include <stdint.h>

#if defined(__CUDACC__)
#define LMX_HD __host__ __device__ __forceinline__
#else
#define LMX_HD inline
#endif

namespace lmx_fast {

struct FastDiv {
  uint32_t d = 1, magic = 1, shift = 0;

  FastDiv() = default;
  // d in [1, 2^31)
  explicit FastDiv(uint32_t divisor) : d(divisor) {
    shift = 0;
    while ((uint64_t(1) << shift) < divisor) ++shift;  // shift = ceil(log2(d)) <= 31
    // magic = floor(2^32 * (2^shift - d) / d) + 1 < 2^32 because 2^shift < 2d
    magic = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - divisor)) / divisor + 1);
  }

  LMX_HD uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t hi = __umulhi(n, magic);
#else
    const uint32_t hi = static_cast<uint32_t>((uint64_t(n) * magic) >> 32);
#endif
    return (hi + n) >> shift;  // hi <= n < 2^31: no overflow
  }
  LMX_HD uint32_t mod(uint32_t n, uint32_t q) const { return n - q * d; }  // q = div(n)
};

}  // namespace lmx_fast

#endif  // LOSSMIX_CUDA_FAST_DIV_H_
