// The device side of a value check in the default ("auto") validation mode: a one-thread kernel
// that reads a flag computed on the device (no host sync) and, when it is set, prints the check's
// own message and fails with a device-side assert ("device-side assert triggered" at the next
// synchronisation). at::_assert_async / torch._assert_async drop their message on CUDA; this
// keeps it, so the log names the argument and its range.
#include <assert.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "launch.h"

namespace {

struct Message {
  char text[LMX_ASSERT_MSG_MAX];
};

__global__ void assert_kernel(const bool* bad, const Message msg) {
  if (*bad) {
    printf("lossmix_ext value check failed on the GPU: %s (LOSSMIX_EXT_VALIDATE=sync raises it as a ValueError "
           "at the call)\n", msg.text);
    // what <assert.h>'s assert() expands to, called directly so that it does not depend on the
    // build's NDEBUG; its "Assertion `...` failed" line carries the message too
    __assert_fail(msg.text, __FILE__, __LINE__, "lossmix_ext value check");
  }
}

}  // namespace

extern "C" int lmx_cuda_assert_flag(const void* bad, const char* message, void* stream) {
  Message m;
  memset(m.text, 0, sizeof(m.text));
  strncpy(m.text, message, sizeof(m.text) - 1);
  assert_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<const bool*>(bad), m);
  return static_cast<int>(cudaGetLastError());
}
