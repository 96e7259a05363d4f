// CUDA kernels of seesaw_fwd / seesaw_bwd (plain CUDA, no torch headers; launched through
// launch.h). One group of threads per row: a warp for C up to kWarpMaxC (4 rows per 128-thread
// block), a whole block beyond. Per row, with the shared maths of lossmix_math.h:
//   1. lse(z) by online softmax (needed for the compensation threshold, or as the plain
//      cross-entropy normaliser when p <= 0 and q <= 0);
//   2. lse(z'_s) of the modified logits of each active label set (both sets in one read);
//   3. grad = sum_s w_s softmax(z'_s) - sum_s w_s onehot(j_s) written once, in the logits dtype.
// Softmax states are kept as (max, sum) (never as a rounded lse), as on the CPU.
// Loads are 16-byte vectors when the rows are contiguous and aligned; no host synchronisation.
#include "common.cuh"

namespace {

using namespace lmx_cuda_dev;

constexpr int kWarp = 32;
constexpr int kWarpBlock = 128;   // threads per block of the warp-per-row kernel
constexpr int kRowBlock = 512;    // threads per block of the block-per-row kernel
constexpr int64_t kWarpMaxC = 2048;

// Merge an online-softmax state across the G threads of a group; every thread gets the result.
template <int G, typename A>
__device__ __forceinline__ void group_merge(A& m, A& s, A* sm, A* ss) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off /= 2) {
    const A m2 = __shfl_xor_sync(0xffffffffu, m, off);
    const A s2 = __shfl_xor_sync(0xffffffffu, s, off);
    lmx::softmax_merge(m, s, m2, s2, Exp());
  }
  if (G == kWarp) {
    // lanes may differ in the last bits (merge order): use lane 0's state everywhere
    m = __shfl_sync(0xffffffffu, m, 0);
    s = __shfl_sync(0xffffffffu, s, 0);
    return;
  }
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  __syncthreads();  // sm / ss may still be read from a previous merge
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    constexpr int NW = G / kWarp;
    m = lane < NW ? sm[lane] : A(-INFINITY);
    s = lane < NW ? ss[lane] : A(0);
#pragma unroll
    for (int off = kWarp / 2; off > 0; off /= 2) {
      const A m2 = __shfl_xor_sync(0xffffffffu, m, off);
      const A s2 = __shfl_xor_sync(0xffffffffu, s, off);
      lmx::softmax_merge(m, s, m2, s2, Exp());
    }
    if (lane == 0) {
      sm[0] = m;
      ss[0] = s;
    }
  }
  __syncthreads();
  m = sm[0];
  s = ss[0];
}

// Calls f(k, vals, n) over the group's share of columns [0, C): n consecutive values from k.
template <typename T, int G, bool VEC, typename F>
__device__ __forceinline__ void row_loop(const T* x, int64_t cs, int64_t C, int lane, F&& f) {
  using A = typename Opmath<T>::type;
  if (VEC) {
    constexpr int NV = Vec16<T>::N;
    const int64_t Cv = C / NV * NV;
    for (int64_t k = static_cast<int64_t>(lane) * NV; k < Cv; k += static_cast<int64_t>(G) * NV) {
      A v[NV];
      Vec16<T>::load(x + k, v);
      f(k, v, NV);
    }
    for (int64_t k = Cv + lane; k < C; k += G) {
      A v[1] = {to_op(x[k])};
      f(k, v, 1);
    }
  } else {
    for (int64_t k = lane; k < C; k += G) {
      A v[1] = {to_op(x[k * cs])};
      f(k, v, 1);
    }
  }
}

// Adds n values to an online softmax state (one rescale per call).
template <typename A>
__device__ __forceinline__ void add_values(A& m, A& s, const A* v, int n) {
  A lm = v[0];
  for (int j = 1; j < n; ++j) lm = lmx::lmx_max(lm, v[j]);
  A ls = A(0);
  for (int j = 0; j < n; ++j) ls += Exp()(v[j] - lm);
  lmx::softmax_merge(m, s, lm, ls, Exp());
}

template <typename T, int G, bool VEC>
__global__ void __launch_bounds__(G == kWarp ? kWarpBlock : G)
    seesaw_fwd_kernel(const lmx_seesaw_fwd_args a) {
  using A = typename Opmath<T>::type;
  constexpr int RPB = G == kWarp ? kWarpBlock / kWarp : 1;
  __shared__ A sm[kWarp], ss[kWarp];
  const int lane = threadIdx.x % G;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * RPB + threadIdx.x / G;
  if (i >= a.N) return;  // whole groups return together (RPB > 1 only for warps)
  const T* x = static_cast<const T*>(a.logits) + i * a.ld;
  T* g = static_cast<T*>(a.grad) + i * a.gld;  // may alias x (in place): every x element is read
                                                // before the same thread overwrites it, and nothing
                                                // reads x after the gradient pass
  const A* lc = static_cast<const A*>(a.log_counts);
  const int64_t C = a.C;

  int64_t lab[2] = {0, 0};
  A w[2] = {A(0), A(0)}, zl[2] = {A(0), A(0)};
  bool act[2] = {false, false};
  const int S = a.S < 2 ? a.S : 2;
  for (int s = 0; s < S; ++s) {
    const int64_t l = a.labels[s * a.lab_s + i * a.lab_n];
    lab[s] = l;
    act[s] = lmx::label_active(l, C, a.has_ignore != 0, a.ignore_index);
    w[s] = static_cast<const A*>(a.weights)[s * a.w_s + i * a.w_n];
    if (act[s]) zl[s] = to_op(x[l * a.cs]);  // the label's logit z_j
  }
  const A o0 = a.obj_weights != nullptr ? to_op(x[C * a.cs]) : A(0);
  const A o1 = a.obj_weights != nullptr ? to_op(x[(C + 1) * a.cs]) : A(0);
  const bool use_p = a.use_p != 0, use_q = a.use_q != 0;
  const bool plain = !use_p && !use_q;
  const A p = static_cast<A>(a.p), q = static_cast<A>(a.q), zero = A(0);

  // 1. softmax state (max m, sum of exp(z - m)) of the plain logits; only the max m when
  //    neither the plain softmax nor the compensation needs the sum. Modified logits are then
  //    computed shifted by m: y = z - m, y' = z' - m (exact near the top of the row).
  A m_plain = A(0), s_plain = A(1);
  if (plain || use_q) {
    A m = A(-INFINITY), s = A(0);
    row_loop<T, G, VEC>(x, a.cs, C, lane, [&](int64_t, const A* v, int n) { add_values(m, s, v, n); });
    group_merge<G>(m, s, sm, ss);
    m_plain = m;
    s_plain = s;
  } else {
    A m = A(-INFINITY), s = A(0);
    row_loop<T, G, VEC>(x, a.cs, C, lane, [&](int64_t, const A* v, int n) {
      for (int j = 0; j < n; ++j) m = lmx::lmx_max(m, v[j]);
    });
    group_merge<G>(m, s, sm, ss);  // s stays 0: a max reduction
    m_plain = m;
  }

  // 2. softmax state of each active set's shifted modified logits: p = exp(y' - ms) / sums
  A thr[2] = {A(0), A(0)}, lcj[2] = {A(0), A(0)};
  A ms[2] = {A(0), A(0)}, sums[2] = {s_plain, s_plain};
  for (int s = 0; s < S; ++s) {
    if (!act[s]) continue;
    if (use_q)
      thr[s] = lmx::compensation_threshold(zl[s] - m_plain, Log()(s_plain), static_cast<A>(a.log_eps));
    if (use_p) lcj[s] = lc[lab[s]];
  }
  if (!plain) {
    A m0 = A(-INFINITY), s0 = A(0), m1 = A(-INFINITY), s1 = A(0);
    row_loop<T, G, VEC>(x, a.cs, C, lane, [&](int64_t k, const A* v, int n) {
      A zp[Vec16<T>::N];
      if (act[0]) {
        for (int j = 0; j < n; ++j)
          zp[j] = lmx::seesaw_modified_logit(v[j] - m_plain, use_p ? lc[k + j] : zero, lcj[0], p, thr[0], q, zero,
                                             use_p, use_q);
        add_values(m0, s0, zp, n);
      }
      if (act[1]) {
        for (int j = 0; j < n; ++j)
          zp[j] = lmx::seesaw_modified_logit(v[j] - m_plain, use_p ? lc[k + j] : zero, lcj[1], p, thr[1], q, zero,
                                             use_p, use_q);
        add_values(m1, s1, zp, n);
      }
    });
    if (act[0]) {
      group_merge<G>(m0, s0, sm, ss);
      ms[0] = m0;
      sums[0] = s0;
    }
    if (act[1]) {
      group_merge<G>(m1, s1, sm, ss);
      ms[1] = m1;
      sums[1] = s1;
    }
  }

  // 3. gradient
  const A w0 = act[0] ? w[0] : A(0), w1 = act[1] ? w[1] : A(0);
  const A f0 = w0 / sums[0], f1 = w1 / sums[1];
  const A f_plain = (w0 + w1) / s_plain;
  const bool any_act = act[0] || act[1];
  auto grad_at = [&](int64_t k, A z) -> A {
    if (!any_act) return A(0);  // no class loss: the row's class logits are not read (0 even for NaN)
    A gk;
    if (plain) {
      gk = f_plain * Exp()(z - m_plain);
    } else {
      const A lk = use_p ? lc[k] : zero;
      const A y = z - m_plain;
      const A e0 = act[0] ? Exp()(lmx::seesaw_modified_logit(y, lk, lcj[0], p, thr[0], q, zero, use_p, use_q) - ms[0])
                          : A(0);
      const A e1 = act[1] ? Exp()(lmx::seesaw_modified_logit(y, lk, lcj[1], p, thr[1], q, zero, use_p, use_q) - ms[1])
                          : A(0);
      gk = lmx::mixed_grad(e0, f0, e1, f1);
    }
    if (act[0] && k == lab[0]) gk -= w0;
    if (act[1] && k == lab[1]) gk -= w1;
    return gk;
  };
  if (VEC) {  // x and g both unit-stride and 16-byte aligned
    constexpr int NV = Vec16<T>::N;
    const int64_t Cv = C / NV * NV;
    for (int64_t k = static_cast<int64_t>(lane) * NV; k < Cv; k += static_cast<int64_t>(G) * NV) {
      A v[NV];
      Vec16<T>::load(x + k, v);
#pragma unroll
      for (int j = 0; j < NV; ++j) v[j] = grad_at(k + j, v[j]);
      Vec16<T>::store(g + k, v);
    }
    for (int64_t k = Cv + lane; k < C; k += G) g[k] = from_op<T>(grad_at(k, to_op(x[k])));
  } else {
    for (int64_t k = lane; k < C; k += G) g[k * a.gcs] = from_op<T>(grad_at(k, to_op(x[k * a.cs])));
  }

  if (lane == 0) {
    A loss = A(0);
    for (int s = 0; s < S; ++s)
      if (act[s]) {
        // plain: lse(z) - z_j = (m - z_j) + log s; modified: lse(y') - y_j = (ms - y_j) + log sums
        loss += w[s] * (plain ? (m_plain - zl[s]) + Log()(s_plain) : (ms[s] - (zl[s] - m_plain)) + Log()(sums[s]));
      }
    static_cast<A*>(a.loss)[i] = loss;
    if (a.obj_weights != nullptr) {
      A oloss = A(0), g0 = A(0), g1 = A(0);
      for (int s = 0; s < S; ++s) {
        const A ow = static_cast<const A*>(a.obj_weights)[s * a.ow_s + i * a.ow_n];
        A l, d0, d1;
        lmx::objectness_ce(o0, o1, lab[s] == C, &l, &d0, &d1, Exp(), Log());
        oloss += ow * l;
        g0 += ow * d0;
        g1 += ow * d1;
      }
      g[C * a.gcs] = from_op<T>(g0);
      g[(C + 1) * a.gcs] = from_op<T>(g1);
      static_cast<A*>(a.obj_loss)[i] = oloss;
    }
  }
}

// 2-D: threadIdx.y / blockIdx.y walk the rows, threadIdx.x / blockIdx.x the (vectors of) columns
// of a row, so a thread reads its row's factors once and never divides an element index.
template <typename T, bool VEC>
__global__ void seesaw_bwd_kernel(const lmx_seesaw_bwd_args a) {
  using A = typename Opmath<T>::type;
  const A* gl = static_cast<const A*>(a.grad_loss);
  const A* go = static_cast<const A*>(a.grad_obj);
  const bool in_place = a.grad == a.out;
  constexpr int NV = VEC ? Vec16<T>::N : 1;
  const int64_t nv = VEC ? a.CT / NV : a.CT;  // with VEC, CT % NV == 0
  const int64_t v0 = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t vstride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t rstride = static_cast<int64_t>(gridDim.y) * blockDim.y;
  for (int64_t i = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; i < a.N; i += rstride) {
    const A sl = gl[i * a.gl_s];
    const A so = go != nullptr ? go[i * a.go_s] : sl;
    // in place, a factor of exactly 1 leaves an element as it is: skip its traffic
    if (in_place && sl == A(1) && so == A(1)) continue;
    const T* g = static_cast<const T*>(a.grad) + i * a.CT;
    T* o = static_cast<T*>(a.out) + i * a.CT;
    for (int64_t v = v0; v < nv; v += vstride) {
      const int64_t k0 = v * NV;
      if (VEC) {
        // the NV elements may straddle the class / objectness boundary
        if (in_place && (go == nullptr || k0 + NV <= a.C ? sl : (k0 >= a.C ? so : A(0))) == A(1)) continue;
        A x[Vec16<T>::N];
        Vec16<T>::load(g + k0, x);
#pragma unroll
        for (int j = 0; j < Vec16<T>::N; ++j) x[j] = x[j] * ((go != nullptr && k0 + j >= a.C) ? so : sl);
        Vec16<T>::store(o + k0, x);
      } else {
        const A f = (go != nullptr && k0 >= a.C) ? so : sl;
        if (in_place && f == A(1)) continue;
        o[k0] = from_op<T>(to_op(g[k0]) * f);
      }
    }
  }
}

template <typename T>
cudaError_t launch_fwd(const lmx_seesaw_fwd_args& a, cudaStream_t stream) {
  if (a.N == 0) return cudaSuccess;
  const bool vec = a.cs == 1 && a.gcs == 1 && aligned16(a.logits) && aligned16(a.grad) &&
                   (a.ld * sizeof(T)) % 16 == 0 && (a.gld * sizeof(T)) % 16 == 0;
  if (a.C <= kWarpMaxC) {
    constexpr int rpb = kWarpBlock / kWarp;
    const dim3 grid(static_cast<unsigned>(ceil_div(a.N, rpb)));
    if (vec) seesaw_fwd_kernel<T, kWarp, true><<<grid, kWarpBlock, 0, stream>>>(a);
    else seesaw_fwd_kernel<T, kWarp, false><<<grid, kWarpBlock, 0, stream>>>(a);
  } else {
    const dim3 grid(static_cast<unsigned>(a.N));
    if (vec) seesaw_fwd_kernel<T, kRowBlock, true><<<grid, kRowBlock, 0, stream>>>(a);
    else seesaw_fwd_kernel<T, kRowBlock, false><<<grid, kRowBlock, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const lmx_seesaw_bwd_args& a, cudaStream_t stream) {
  if (a.N == 0 || a.CT == 0) return cudaSuccess;
  const bool vec = aligned16(a.grad) && aligned16(a.out) && a.CT % Vec16<T>::N == 0;
  const int64_t nv = vec ? a.CT / Vec16<T>::N : a.CT;
  // a row's vectors over whole warps (at most 256 threads), the rest of the 256 over rows
  const int tx = static_cast<int>(nv >= 256 ? 256 : ceil_div(nv, int64_t(32)) * 32);
  const int ty = 256 / tx;
  const int64_t gx = ceil_div(nv, int64_t(tx)), gy = ceil_div(a.N, int64_t(ty));
  const dim3 block(static_cast<unsigned>(tx), static_cast<unsigned>(ty));
  const dim3 grid(static_cast<unsigned>(gx < 1024 ? gx : 1024), static_cast<unsigned>(gy < 65535 ? gy : 65535));
  if (vec) seesaw_bwd_kernel<T, true><<<grid, block, 0, stream>>>(a);
  else seesaw_bwd_kernel<T, false><<<grid, block, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

extern "C" int lmx_cuda_seesaw_fwd(const lmx_seesaw_fwd_args* args, void* stream) {
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (args->dtype) {
    case LMX_F32: return static_cast<int>(launch_fwd<float>(*args, st));
    case LMX_F16: return static_cast<int>(launch_fwd<__half>(*args, st));
    case LMX_BF16: return static_cast<int>(launch_fwd<__nv_bfloat16>(*args, st));
    case LMX_F64: return static_cast<int>(launch_fwd<double>(*args, st));
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

extern "C" int lmx_cuda_seesaw_bwd(const lmx_seesaw_bwd_args* args, void* stream) {
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (args->dtype) {
    case LMX_F32: return static_cast<int>(launch_bwd<float>(*args, st));
    case LMX_F16: return static_cast<int>(launch_bwd<__half>(*args, st));
    case LMX_BF16: return static_cast<int>(launch_bwd<__nv_bfloat16>(*args, st));
    case LMX_F64: return static_cast<int>(launch_bwd<double>(*args, st));
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}
