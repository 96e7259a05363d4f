// Baseline build of the CPU kernels (the compiler's default instruction set: SSE2 on x86-64,
// NEON on aarch64) and the run-time choice between it and the AVX2 build.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#define LMX_ISA_NS base
#include "kernels_impl.h"
#undef LMX_ISA_NS

namespace lmx_cpu {

namespace base {
const KernelTable& get_table() {
  static const KernelTable t = make_table("baseline");
  return t;
}
}  // namespace base

namespace {

bool cpu_has_avx2() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

const KernelTable* avx2_table() {
  // avx2::get_table is compiled for AVX2: only call it on a CPU that has it.
  static const KernelTable* t = cpu_has_avx2() ? avx2::get_table() : nullptr;
  return t;
}

const KernelTable* pick(const char* name) {
  if (name == nullptr || std::strcmp(name, "auto") == 0 || name[0] == '\0') {
    const KernelTable* t = avx2_table();
    return t != nullptr ? t : &base::get_table();
  }
  if (std::strcmp(name, "baseline") == 0) return &base::get_table();
  if (std::strcmp(name, "avx2") == 0) return avx2_table();
  return nullptr;
}

std::atomic<const KernelTable*> g_table{nullptr};

}  // namespace

const KernelTable& table() {
  const KernelTable* t = g_table.load(std::memory_order_acquire);
  if (t == nullptr) {
    t = pick(std::getenv("LOSSMIX_EXT_CPU_ISA"));
    if (t == nullptr) t = pick("auto");  // unknown or unsupported value: the default
    g_table.store(t, std::memory_order_release);
  }
  return *t;
}

bool set_isa(const char* name) {
  const KernelTable* t = pick(name);
  if (t == nullptr) return false;
  g_table.store(t, std::memory_order_release);
  return true;
}

const char* available_isas() { return avx2_table() != nullptr ? "baseline,avx2" : "baseline"; }

}  // namespace lmx_cpu
