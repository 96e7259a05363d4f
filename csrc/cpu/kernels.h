// Interface between the torch glue (ops_cpu.cpp) and the CPU kernels, which are plain C++
// on raw pointers (no torch headers) compiled twice: a baseline build (kernels_base.cpp) and,
// on x86-64, an AVX2+FMA build (kernels_avx2.cpp) chosen at run time when the CPU has it.
// The glue parallelises over rows / samples with at::parallel_for and calls these on ranges.
#ifndef LOSSMIX_CPU_KERNELS_H_
#define LOSSMIX_CPU_KERNELS_H_

#include <cstdint>

namespace lmx_cpu {

// Rows are processed in chunks of this many columns (two passes per chunk while it sits in
// L1, chunk results merged with the online softmax update).
constexpr int64_t kSeesawChunk = 2048;

// seesaw_fwd on float32 / float64 rows (the op's contract, see lossmix_ext/_ops.py).
template <class T>
struct SeesawArgs {
  const T* logits = nullptr;  // row i starts at logits + i * ld, column stride 1
  int64_t ld = 0;
  T* grad = nullptr;  // row i starts at grad + i * ldg (CT columns)
  int64_t ldg = 0;
  const int64_t* labels = nullptr;  // labels[s * lab_s + i * lab_n]
  int64_t lab_s = 0, lab_n = 0;
  const T* weights = nullptr;  // weights[s * w_s + i * w_n]
  int64_t w_s = 0, w_n = 0;
  const T* obj_weights = nullptr;  // nullptr: no objectness columns
  int64_t ow_s = 0, ow_n = 0;
  const T* log_counts = nullptr;  // (C,) log(max(count, 1)), read when use_p
  const T* mit_a = nullptr;       // (C,) exp(p (log_counts - log_count_max)), read when use_p
  T log_count_max = 0, log_count_range = 0;  // max and max - min of log_counts
  T* loss = nullptr;              // (N,)
  T* obj_loss = nullptr;          // (N,) when obj_weights
  int64_t C = 0;                  // class columns (CT = C + 2 with objectness)
  int S = 1;                      // label sets, 1 or 2
  bool use_p = false, use_q = false, has_ignore = false;
  int64_t ignore_index = 0;
  T p = 0, q = 0, log_eps = 0;
};

// Scratch (elements of T) that one thread needs for seesaw rows of C classes.
inline int64_t seesaw_scratch_elems(int64_t C) {
  const int64_t nch = (C + kSeesawChunk - 1) / kSeesawChunk;
  return 2 * C + 4 * nch + 64;
}

// seesaw_bwd: out[i, k] = grad[i, k] * (k < C ? grad_loss[i] : grad_obj[i]). With out == grad (in
// place), spans whose factor is exactly 1 are left untouched (x * 1 == x), so they cost no traffic.
template <class T>
struct ScaleArgs {
  const T* grad = nullptr;
  int64_t ldg = 0;
  T* out = nullptr;
  int64_t ldo = 0;
  const T* grad_loss = nullptr;  // grad_loss[i * gl_s]
  int64_t gl_s = 0;
  const T* grad_obj = nullptr;  // nullptr: all columns scale by grad_loss
  int64_t go_s = 0;
  int64_t C = 0, CT = 0;
};

// mix_images (out of place, no CutMix boxes): out[b] = lam[b] v(x[b]) + (1 - lam[b]) v(x[index[b]]),
// v(x) = (x * scale - mean[c]) / std[c]. Samples are contiguous blocks of P elements; the
// channel of element e is (e / inner) % channels (inner = H*W for NCHW, 1 for channels_last).
template <class Tm>
struct MixArgs {
  const void* x = nullptr;
  void* out = nullptr;
  int64_t B = 0, P = 0;
  const Tm* lam = nullptr;
  const int64_t* index = nullptr;
  Tm scale = 1;
  const Tm* mean = nullptr;  // (channels,) or nullptr
  const Tm* stdv = nullptr;  // (channels,) or nullptr
  int64_t channels = 1, inner = 1;
};

// Element storage of the image-mixing kernels that compute in float32: the float32 kernels read
// and write float32 (and read uint8) directly; float16 / bfloat16 samples are converted block by
// block (vector conversions, round to nearest even as PyTorch's) around the same float32 maths.
enum ElemKind : int { kElemF32 = 0, kElemF16 = 1, kElemBF16 = 2, kElemU8 = 3 };

// mix_images_backward (no boxes): dx[t] = k * (lam[t] g[t] + sum over b with index[b] == t of
// (1 - lam[b]) g[b]), k = scale / std[c]; `sources[offsets[t] .. offsets[t + 1])` lists those
// b in increasing order (the order in which index_add_ accumulates). grad and dx hold Tm, or
// (Tm = float) the kind the kernel is called with.
template <class Tm>
struct MixBwdArgs {
  const void* grad = nullptr;
  void* dx = nullptr;
  int64_t B = 0, P = 0;
  const Tm* lam = nullptr;
  const int64_t* offsets = nullptr;
  const int64_t* sources = nullptr;
  Tm scale = 1;
  const Tm* stdv = nullptr;
  int64_t channels = 1, inner = 1;
};

struct KernelTable {
  const char* isa;
  void (*seesaw_rows_f32)(const SeesawArgs<float>&, int64_t r0, int64_t r1, float* scratch);
  void (*seesaw_rows_f64)(const SeesawArgs<double>&, int64_t r0, int64_t r1, double* scratch);
  // One row from explicit buffers (converted / gathered rows): z has CT values, g receives CT.
  void (*seesaw_row_f32)(const SeesawArgs<float>&, int64_t i, const float* z, float* g, float* scratch);
  void (*seesaw_row_f64)(const SeesawArgs<double>&, int64_t i, const double* z, double* g, double* scratch);
  void (*scale_rows_f32)(const ScaleArgs<float>&, int64_t r0, int64_t r1);
  void (*scale_rows_f64)(const ScaleArgs<double>&, int64_t r0, int64_t r1);
  // elements [e0, e1) of sample b; float32 maths between storage kinds (ElemKind: images of
  // any kind, output float32 / float16 / bfloat16), or float64 throughout
  void (*mix_f32)(int in_kind, int out_kind, const MixArgs<float>&, int64_t b, int64_t e0, int64_t e1);
  void (*mix_f64_f64)(const MixArgs<double>&, int64_t b, int64_t e0, int64_t e1);
  // grad and dx of kind (float32, float16 or bfloat16), maths in float32
  void (*mix_bwd_f32)(int kind, const MixBwdArgs<float>&, int64_t t, int64_t e0, int64_t e1);
  void (*mix_bwd_f64)(const MixBwdArgs<double>&, int64_t t, int64_t e0, int64_t e1);
  // in-place pair (b, c): both samples' elements [e0, e1) from one read of each
  void (*mix_pair_f32)(float* xb, float* xc, float lb, float lc, int64_t e0, int64_t e1);
  void (*mix_pair_f64)(double* xb, double* xc, double lb, double lc, int64_t e0, int64_t e1);
  void (*mix_pair_half)(int kind, uint16_t* xb, uint16_t* xc, float lb, float lc, int64_t e0, int64_t e1);
  // n contiguous float16 (kind kElemF16) / bfloat16 (kElemBF16) values <-> float32
  void (*half_to_float)(int kind, const uint16_t* src, float* dst, int64_t n);
  void (*float_to_half)(int kind, const float* src, uint16_t* dst, int64_t n);
  // dst[0, n) = src[0, n) * s for float16 / bfloat16 values (dst may be src)
  void (*scale_half)(int kind, const uint16_t* src, uint16_t* dst, int64_t n, float s);
};

// The table in use: AVX2 when the CPU supports AVX2 and FMA (and it was compiled), else the
// baseline. LOSSMIX_EXT_CPU_ISA=baseline in the environment, or set_isa("baseline"), forces
// the baseline; set_isa("auto") restores the default. set_isa returns false for an unknown or
// unsupported name.
const KernelTable& table();
bool set_isa(const char* name);
const char* available_isas();  // e.g. "baseline,avx2"

namespace base {
const KernelTable& get_table();
}
namespace avx2 {
const KernelTable* get_table();  // nullptr when not compiled in
}

}  // namespace lmx_cpu

#endif  // LOSSMIX_CPU_KERNELS_H_
