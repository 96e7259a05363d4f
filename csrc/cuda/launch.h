/* C-style launcher interface of the CUDA kernels (seesaw.cu, mix.cu).
 *
 * The kernels are plain CUDA (no torch headers) so that every .cu file compiles with a bare
 * `nvcc -c`; the torch glue (ops_cuda.cpp) passes raw pointers, sizes, strides (in elements)
 * and the current stream (a cudaStream_t passed as void*). Launchers never synchronise; they
 * return the cudaError_t of the launch (0 on success). "Opmath" below is float, or double for
 * float64 data. */
#ifndef LOSSMIX_CUDA_LAUNCH_H_
#define LOSSMIX_CUDA_LAUNCH_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum lmx_dtype { LMX_F32 = 0, LMX_F16 = 1, LMX_BF16 = 2, LMX_F64 = 3, LMX_U8 = 4 };

/* seesaw_fwd (contract in lossmix_ext/_ops.py). */
typedef struct {
  const void* logits; /* (N, CT) of `dtype`, element (i, k) at logits[i * ld + k * cs] */
  int64_t ld, cs;
  void* grad; /* (N, CT) of `dtype`, element (i, k) at grad[i * gld + k * gcs]; may be `logits` (in place) */
  int64_t gld, gcs;
  const int64_t* labels; /* labels[s * lab_s + i * lab_n] */
  int64_t lab_s, lab_n;
  const void* weights; /* opmath, weights[s * w_s + i * w_n] */
  int64_t w_s, w_n;
  const void* obj_weights; /* opmath or NULL (no objectness columns) */
  int64_t ow_s, ow_n;
  const void* log_counts; /* opmath (C,): log(max(count, 1)), read when use_p */
  void* loss;             /* opmath (N,) */
  void* obj_loss;         /* opmath (N,) when obj_weights */
  int64_t N, C, CT;
  int S; /* 1 or 2 */
  int dtype;
  int use_p, use_q, has_ignore;
  int64_t ignore_index;
  double p, q, log_eps;
} lmx_seesaw_fwd_args;

/* seesaw_bwd: out[i, k] = grad[i, k] * (k < C or !grad_obj ? grad_loss[i * gl_s] : grad_obj[i * go_s]);
 * grad and out (N, CT) contiguous of `dtype`, grad_loss / grad_obj opmath. out == grad (in place):
 * elements whose factor is exactly 1 are neither read nor written. */
typedef struct {
  const void* grad;
  void* out;
  const void* grad_loss;
  int64_t gl_s;
  const void* grad_obj;
  int64_t go_s;
  int64_t N, C, CT;
  int dtype;
} lmx_seesaw_bwd_args;

/* mix_images: samples are contiguous blocks of P elements, NCHW (channels_last = 0) or
 * channels_last; C, H, W describe a 4-D batch (C = H = 1, W = P otherwise). */
typedef struct {
  const void* x;
  void* out;
  int in_dtype, out_dtype; /* supported: {u8, f16, bf16, f32} -> {f16, bf16, f32}, and f64 -> f64 */
  int64_t B, P, C, H, W;
  int channels_last;
  const void* lam;      /* opmath (B,) */
  const int64_t* index; /* (B,) */
  const int64_t* boxes; /* (B, 4) (y0, x0, y1, x1) or NULL */
  const void* mean;     /* opmath (C,) or NULL */
  const void* stdv;     /* opmath (C,) or NULL */
  double scale;
} lmx_mix_args;

/* mix_images_backward: dx[t] = k (a_t g[t] + sum_{j in [offsets[t], offsets[t+1])} (1 - a_b) g[b]),
 * b = sources[j] (increasing), a_b = lam[b] outside box b and 0 inside, k = scale / std[c]. */
typedef struct {
  const void* grad;
  void* dx;
  int grad_dtype, dx_dtype; /* {f16, bf16, f32} x {f16, bf16, f32}, and f64 x f64 */
  int64_t B, P, C, H, W;
  int channels_last;
  const void* lam; /* opmath (B,) */
  const int64_t* offsets; /* (B + 1,) */
  const int64_t* sources; /* (B,) */
  const int64_t* boxes;
  const void* stdv;
  double scale;
} lmx_mix_bwd_args;

/* mix_images_: in place, pairs (b, index[b]) with b < index[b] and index[index[b]] == b; inside
 * CutMix box b, x[b] takes x[index[b]]'s old value. Layout as for mix_images. */
typedef struct {
  void* x;
  int dtype; /* f16, bf16, f32, f64 */
  int64_t B, P, C, H, W;
  int channels_last;
  const void* lam; /* opmath (B,) */
  const int64_t* index;
  const int64_t* boxes; /* (B, 4) (y0, x0, y1, x1) or NULL */
} lmx_mix_pairs_args;

int lmx_cuda_seesaw_fwd(const lmx_seesaw_fwd_args* args, void* stream);
int lmx_cuda_seesaw_bwd(const lmx_seesaw_bwd_args* args, void* stream);
int lmx_cuda_mix(const lmx_mix_args* args, void* stream);
int lmx_cuda_mix_backward(const lmx_mix_bwd_args* args, void* stream);
int lmx_cuda_mix_pairs(const lmx_mix_pairs_args* args, void* stream);

/* A value check's device side (check.cu): when the device bool *bad is true, print `message`
 * (at most LMX_ASSERT_MSG_MAX - 1 bytes are kept) and fail with a device-side assert. */
#define LMX_ASSERT_MSG_MAX 256
int lmx_cuda_assert_flag(const void* bad, const char* message, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* LOSSMIX_CUDA_LAUNCH_H_ */
