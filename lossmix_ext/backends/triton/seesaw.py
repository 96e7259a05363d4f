"""Triton kernels for ``seesaw_fwd`` and ``seesaw_bwd`` (contracts in :mod:`lossmix_ext._ops`).

Forward, per row and label set s with label j (σ = softmax of the plain logits, detached)::

    z'_k = z_k + p·min(0, log N_k − log N_j) + q·max(0, z_k − max(z_j, m + log l + log eps))   (k ≠ j)
    loss_s = lse(z') − z_j,     grad_s = softmax(z') − onehot_j

where m, l are the row's max and Σ exp(z − m): ``z_k − max(z_j, m + log l + log eps)`` is
``log σ_k − max(log σ_j, log eps)`` with the row's normaliser cancelled, so σ is never
formed. For k = j both terms vanish exactly, so the true class needs no masking. All of it is
evaluated on z − m, so the adjusted logits near the top are O(1) even for ±1e4 logits. The
kernel writes ``Σ_s w_s·grad_s`` (and the objectness part) in the logits' dtype, all maths in
float32, the true-class term ``w·(p_j − 1)`` formed in float32 before the one rounding. The
mitigation term reads a (C,) vector of log counts computed once per call on device; there is
no C×C matrix, no one-hot tensor and no host synchronisation.

Two forward kernels, chosen by :func:`_fwd_launch` (shared with :func:`aot_configs`):

* ``resident`` (C ≤ 8192): ``ROWS`` rows of ``BLOCK_C = next_pow2(C)`` columns per program,
  held in registers; each logit is read once and each gradient written once. The S label
  sets are a runtime loop over the registers.
* ``looped`` (C > 8192): one row per program in chunks of ``BLOCK_C``; the row is read two
  (cross-entropy) or three (Seesaw) times — plain max/sum, then the adjusted log-sum-exp of
  every label set at once (S is a block axis), then the gradient — and written once.

float64 inputs are handled by the torch backend's kernels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import triton
import triton.language as tl

from ..._backend import register_kernel
from .. import torch as _torch_backend
from . import device_guard

RESIDENT_MAX_BLOCK = 8192   # widest row kept in registers (C ≤ 8192)
ELEMS_PER_THREAD = 8        # target logits per thread per tile: num_warps = tile / (32 · 8), in [1, 16]
LOOPED_TILE = 4096          # elements per chunk (S × BLOCK_C) in the looped kernel
BWD_BLOCK_C = 256           # widest column tile of the backward kernel
BWD_TILE = 4096

_TL_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_INT32_MIN, _INT32_MAX = -(2 ** 31), 2 ** 31 - 1


# --------------------------------------------------------------------------- kernels
@triton.jit
def _adjusted(x, ln, lnj, thr, p, q):
    """z' = z + p·min(0, log N_k − log N_j) + q·max(0, z_k − thr_j) (broadcasting)."""
    return x + p * tl.minimum(ln - lnj, 0.0) + q * tl.maximum(x - thr, 0.0)


@triton.jit
def _seesaw_fwd_resident(x_ptr, stride_x, labels_ptr, w_ptr, ow_ptr, logn_ptr,
                         loss_ptr, obj_loss_ptr, grad_ptr,
                         N, C, CT, ignore_index, p, q, log_eps, S: tl.constexpr, HAS_OBJ: tl.constexpr,
                         SEESAW: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr):
    # ROWS rows of BLOCK_C columns per program; the S label sets are an unrolled loop.
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_ok = rows < N
    # rows past N (last program) re-read row N-1 instead of computing on -inf; never stored
    rows64 = tl.minimum(rows, N - 1).to(tl.int64)
    xrow = x_ptr + rows64 * stride_x
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < C
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(xrow[:, None] + cols[None, :], mask=tl.broadcast_to(col_ok[None, :], [ROWS, BLOCK_C]),
                other=float("-inf")).to(tl.float32)

    # plain softmax statistics of the row (shared by every label set). Everything below is
    # relative to the row max m (xs = z − m): adjusted logits near the top stay O(1), so ±1e4
    # logits keep full float32 precision in softmax(z') and in lse(z') − z_j.
    m = tl.max(x, 1)
    xs = x - m[:, None]
    e = tl.exp(xs)
    l = tl.sum(e, 1)
    if SEESAW:
        log_norm = tl.log(l) + log_eps          # log(eps · Σ exp(z − m))
        ln = tl.load(logn_ptr + cols, mask=col_ok & (p > 0), other=0.0)[None, :]
    else:
        lse = tl.log(l)
        prob = e * (1.0 / l)[:, None]

    g = tl.zeros([ROWS, BLOCK_C], dtype=tl.float32)
    loss = tl.zeros([ROWS], dtype=tl.float32)
    n_act = tl.zeros([ROWS], dtype=tl.int32)
    for s in range(0, S):
        lab = tl.load(labels_ptr + s * N + rows64, mask=row_ok, other=-1)
        active = row_ok & (lab >= 0) & (lab < C) & (lab != ignore_index)
        j = tl.where(active, lab, 0)
        w = tl.load(w_ptr + s * N + rows64, mask=active, other=0.0)
        zj = tl.load(xrow + j, mask=active, other=0.0).to(tl.float32) - m
        if SEESAW:
            lnj = tl.load(logn_ptr + j, mask=active & (p > 0), other=0.0)
            thr = tl.maximum(zj, log_norm)
            z = _adjusted(xs, ln, lnj[:, None], thr[:, None], p, q)
            m2 = tl.max(z, 1)
            e2 = tl.exp(z - m2[:, None])
            l2 = tl.sum(e2, 1)
            lse = m2 + tl.log(l2)
            prob = e2 * (1.0 / l2)[:, None]
        onehot = (cols[None, :] == j[:, None]).to(tl.float32)
        loss += tl.where(active, w * (lse - zj), 0.0)
        g += w[:, None] * (prob - onehot)
        n_act += active.to(tl.int32)
    tl.store(loss_ptr + rows, loss, mask=row_ok)
    # A row without a class loss does not read its class logits: 0, even where they are NaN
    # (w = 0 there, but 0·NaN is NaN). Rows with an active set that read a NaN are NaN anyway.
    g = tl.where((n_act > 0)[:, None], g, 0.0)
    grow = grad_ptr + rows64 * CT
    out_ty = grad_ptr.dtype.element_ty
    tl.store(grow[:, None] + cols[None, :], g.to(out_ty), mask=mask)

    # objectness: 2-way cross-entropy on the last 2 columns [fg, bg], target bg iff label == C
    if HAS_OBJ:
        o0 = tl.load(xrow + C, mask=row_ok, other=0.0).to(tl.float32)
        o1 = tl.load(xrow + C + 1, mask=row_ok, other=0.0).to(tl.float32)
        mo = tl.maximum(o0, o1)
        d0 = tl.exp(o0 - mo)
        d1 = tl.exp(o1 - mo)
        lse_o = mo + tl.log(d0 + d1)
        p0 = d0 / (d0 + d1)
        p1 = d1 / (d0 + d1)
        obj_loss = tl.zeros([ROWS], dtype=tl.float32)
        go0 = tl.zeros([ROWS], dtype=tl.float32)
        go1 = tl.zeros([ROWS], dtype=tl.float32)
        for s in range(0, S):
            bg = tl.load(labels_ptr + s * N + rows64, mask=row_ok, other=-1) == C
            ow = tl.load(ow_ptr + s * N + rows64, mask=row_ok, other=0.0)
            obj_loss += ow * (lse_o - tl.where(bg, o1, o0))
            go0 += ow * (p0 - tl.where(bg, 0.0, 1.0))
            go1 += ow * (p1 - tl.where(bg, 1.0, 0.0))
        tl.store(obj_loss_ptr + rows, obj_loss, mask=row_ok)
        tl.store(grow + C, go0.to(out_ty), mask=row_ok)
        tl.store(grow + C + 1, go1.to(out_ty), mask=row_ok)


@triton.jit
def _seesaw_fwd_looped(x_ptr, stride_x, labels_ptr, w_ptr, ow_ptr, logn_ptr,
                       loss_ptr, obj_loss_ptr, grad_ptr,
                       N, C, CT, ignore_index, p, q, log_eps,
                       S: tl.constexpr, HAS_OBJ: tl.constexpr, SEESAW: tl.constexpr,
                       BLOCK_C: tl.constexpr, ROWS: tl.constexpr):
    # One row per program (ROWS is 1); the S label sets are the leading axis of every chunk.
    row64 = tl.program_id(0).to(tl.int64)
    xrow = x_ptr + row64 * stride_x
    cols0 = tl.arange(0, BLOCK_C)
    sets = tl.arange(0, S)
    lab = tl.load(labels_ptr + sets * N + row64)
    active = (lab >= 0) & (lab < C) & (lab != ignore_index)
    j = tl.where(active, lab, 0)
    w = tl.load(w_ptr + sets * N + row64, mask=active, other=0.0)
    zj = tl.load(xrow + j, mask=active, other=0.0).to(tl.float32)

    # pass 1: online max / sum of the plain logits (first chunk peeled: C ≥ 1)
    x1 = tl.load(xrow + cols0, mask=cols0 < C, other=float("-inf")).to(tl.float32)
    m = tl.max(x1, 0)
    l = tl.sum(tl.exp(x1 - m), 0)
    for start in range(BLOCK_C, C, BLOCK_C):
        cols = start + cols0
        x1 = tl.load(xrow + cols, mask=cols < C, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x1, 0))
        l = l * tl.exp(m - m_new) + tl.sum(tl.exp(x1 - m_new), 0)
        m = m_new

    # from here on everything is relative to the row max m (see the resident kernel)
    zj = zj - m
    if SEESAW:
        thr = tl.maximum(zj, tl.log(l) + log_eps)[:, None]
        lnj = tl.load(logn_ptr + j, mask=active & (p > 0), other=0.0)[:, None]
        # pass 2: online log-sum-exp of the adjusted logits of every set
        ok = cols0 < C
        x2 = tl.load(xrow + cols0, mask=ok, other=float("-inf")).to(tl.float32)[None, :] - m
        ln = tl.load(logn_ptr + cols0, mask=ok & (p > 0), other=0.0)[None, :]
        z = _adjusted(x2, ln, lnj, thr, p, q)
        m2 = tl.max(z, 1)
        l2 = tl.sum(tl.exp(z - m2[:, None]), 1)
        for start in range(BLOCK_C, C, BLOCK_C):
            cols = start + cols0
            ok = cols < C
            x2 = tl.load(xrow + cols, mask=ok, other=float("-inf")).to(tl.float32)[None, :] - m
            ln = tl.load(logn_ptr + cols, mask=ok & (p > 0), other=0.0)[None, :]
            z = _adjusted(x2, ln, lnj, thr, p, q)
            m_new2 = tl.maximum(m2, tl.max(z, 1))
            l2 = l2 * tl.exp(m2 - m_new2) + tl.sum(tl.exp(z - m_new2[:, None]), 1)
            m2 = m_new2
        lse = m2 + tl.log(l2)
    else:
        lse = tl.zeros([S], dtype=tl.float32) + tl.log(l)
    tl.store(loss_ptr + row64, tl.sum(tl.where(active, w * (lse - zj), 0.0), 0))

    # pass 3: the gradient Σ_s w_s·(softmax(z'_s) − onehot_s)
    any_active = tl.max(active.to(tl.int32), 0) > 0
    grow = grad_ptr + row64 * CT
    out_ty = grad_ptr.dtype.element_ty
    for start in range(0, C, BLOCK_C):
        cols3 = start + cols0
        ok3 = cols3 < C
        x3 = tl.load(xrow + cols3, mask=ok3, other=float("-inf")).to(tl.float32)[None, :] - m
        if SEESAW:
            ln3 = tl.load(logn_ptr + cols3, mask=ok3 & (p > 0), other=0.0)[None, :]
            z3 = _adjusted(x3, ln3, lnj, thr, p, q)
        else:
            z3 = x3
        prob = tl.exp(z3 - lse[:, None])
        onehot = (cols3[None, :] == j[:, None]).to(tl.float32)
        g = tl.sum(w[:, None] * (prob - onehot), 0)
        g = tl.where(any_active, g, 0.0)  # no class loss: 0 even for NaN logits (see the resident kernel)
        tl.store(grow + cols3, g.to(out_ty), mask=ok3)

    # objectness: the last 2 columns [fg, bg]
    if HAS_OBJ:
        o0 = tl.load(xrow + C).to(tl.float32)
        o1 = tl.load(xrow + C + 1).to(tl.float32)
        mo = tl.maximum(o0, o1)
        d0 = tl.exp(o0 - mo)
        d1 = tl.exp(o1 - mo)
        lse_o = mo + tl.log(d0 + d1)
        bg = lab == C
        ow = tl.load(ow_ptr + sets * N + row64, mask=sets < S, other=0.0)
        tl.store(obj_loss_ptr + row64, tl.sum(ow * (lse_o - tl.where(bg, o1, o0)), 0))
        tl.store(grow + C, tl.sum(ow * (d0 / (d0 + d1) - tl.where(bg, 0.0, 1.0)), 0).to(out_ty))
        tl.store(grow + C + 1, tl.sum(ow * (d1 / (d0 + d1) - tl.where(bg, 1.0, 0.0)), 0).to(out_ty))


@triton.jit
def _seesaw_bwd_kernel(g_ptr, gl_ptr, gl_stride, go_ptr, go_stride, out_ptr, N, CT, C,
                       BLOCK_C: tl.constexpr, ROWS: tl.constexpr, IN_PLACE: tl.constexpr):
    # one grid axis over (row block, column block) pairs: the second and third grid axes stop at
    # 65535 programs (16.7M columns with 256-wide tiles), the first one at 2^31 - 1
    pid = tl.program_id(0)
    col_blocks = tl.cdiv(CT, BLOCK_C)
    rows = (pid // col_blocks) * ROWS + tl.arange(0, ROWS)
    cols = (pid % col_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    mask = row_ok[:, None] & (cols < CT)[None, :]
    offs = rows64[:, None] * CT + cols[None, :]
    s_cls = tl.load(gl_ptr + rows64 * gl_stride, mask=row_ok, other=0.0).to(tl.float32)
    s_obj = tl.load(go_ptr + rows64 * go_stride, mask=row_ok, other=0.0).to(tl.float32)  # = gl without objectness
    scale = tl.where(cols[None, :] < C, s_cls[:, None], s_obj[:, None])
    if IN_PLACE:  # out is g: an element whose factor is exactly 1 stays as it is, no traffic
        mask = mask & (scale != 1.0)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (g * scale).to(out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- launch choice
@dataclass(frozen=True)
class Launch:
    """One kernel configuration: which kernel, its block constexprs and num_warps."""
    kernel: str        # "resident", "looped" or "bwd"
    block_c: int
    rows: int
    num_warps: int


def _warps(tile: int) -> int:
    return max(1, min(16, tile // (32 * ELEMS_PER_THREAD)))


def _fwd_launch(num_classes: int, num_sets: int) -> Launch:
    """The forward configuration for C class columns and S label sets (used by dispatch and AOT).

    Rows of ≥ 256 columns get one program each, 8 logits per thread (16 at 8192). Narrower rows
    are packed into one-warp programs of ≤ 256 elements. A row's per-row scalars (label,
    weight, max, sums, objectness, …) live in every thread that holds part of that row, so the
    packing keeps at most 2 rows per thread even when the columns are not 16-aligned (odd C,
    e.g. 81 or 1203, where each thread reads single elements and a row spans several warps):
    multi-row tiles of 8–32 rows over 4–8 warps compiled to 160–255 registers, with spills.
    """
    block = triton.next_power_of_2(max(int(num_classes), 1))
    if block <= RESIDENT_MAX_BLOCK:
        if block >= 256:
            return Launch("resident", block, 1, _warps(block))
        rows = min(256 // block, 2 * max(1, 32 // block))
        return Launch("resident", block, rows, 1)
    block = LOOPED_TILE // num_sets
    return Launch("looped", block, 1, _warps(LOOPED_TILE))


def _bwd_launch(num_cols: int) -> Launch:
    block = min(triton.next_power_of_2(max(int(num_cols), 1)), BWD_BLOCK_C)
    return Launch("bwd", block, BWD_TILE // block, _warps(BWD_TILE))


def _bwd_grid(n: int, ct: int, launch: Launch) -> Tuple[int]:
    """The backward's grid: one axis of (row block, column block) programs, which holds up to
    2^31 - 1 of them (the other axes stop at 65535)."""
    programs = triton.cdiv(n, launch.rows) * triton.cdiv(ct, launch.block_c)
    if programs >= 2 ** 31:
        raise ValueError(f"seesaw_bwd: {n} x {ct} elements need {programs} programs, more than a grid holds")
    return (programs,)


_FWD_KERNELS = {"resident": _seesaw_fwd_resident, "looped": _seesaw_fwd_looped}


# --------------------------------------------------------------------------- dispatch
_device_guard = device_guard


@register_kernel("seesaw_fwd_inplace", "triton")
def seesaw_fwd_inplace(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index):
    """``seesaw_fwd`` writing the gradient over ``logits`` (contiguous): each program loads its
    rows (or, looped, each chunk) before storing the gradient there, so aliasing is safe."""
    return seesaw_fwd(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index, out=logits)


@register_kernel("seesaw_fwd", "triton")
def seesaw_fwd(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index, out=None):
    if logits.dtype not in _TL_DTYPES:  # float64: the torch backend computes in float64
        res = _torch_backend.seesaw_fwd(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index)
        if out is not None:
            out.copy_(res[2])
            return res[0], res[1], out
        return res
    n, ct = logits.shape
    has_obj = obj_weights is not None
    c = ct - 2 if has_obj else ct
    if labels.dim() != 2 or labels.shape[0] not in (1, 2) or labels.shape[1] != n:
        raise ValueError(f"labels must have shape (S, {n}) with S in (1, 2), got {tuple(labels.shape)}")
    num_sets = labels.shape[0]
    if tuple(weights.shape) != (num_sets, n):
        raise ValueError(f"weights must have shape ({num_sets}, {n}), got {tuple(weights.shape)}")
    if has_obj and tuple(obj_weights.shape) != (num_sets, n):
        raise ValueError(f"obj_weights must have shape ({num_sets}, {n}), got {tuple(obj_weights.shape)}")
    if c < 1:
        raise ValueError(f"logits must have at least one class column, got {ct} columns")
    dev = logits.device
    loss = torch.empty((n,), dtype=torch.float32, device=dev)
    obj_loss = torch.empty((n if has_obj else 0,), dtype=torch.float32, device=dev)
    if out is not None:
        if out.data_ptr() != logits.data_ptr() or not logits.is_contiguous():
            raise ValueError("the in-place gradient needs contiguous logits and out=logits")
        grad = out
    else:
        grad = torch.empty((n, ct), dtype=logits.dtype, device=dev)
    if n == 0:
        return loss, obj_loss, grad
    if logits.stride(1) != 1:
        logits = logits.contiguous()  # rows may have any stride; columns must be adjacent
    labels = labels.to(torch.int64).contiguous()
    weights = weights.to(torch.float32).contiguous()
    obj_w = obj_weights.to(torch.float32).contiguous() if has_obj else weights
    p_eff = float(p) if p > 0 and counts is not None else 0.0
    q_eff = float(q) if q > 0 else 0.0
    seesaw = p_eff > 0 or q_eff > 0
    if p_eff > 0:
        if counts.dim() != 1 or counts.shape[0] != c:
            raise ValueError(f"counts must have shape ({c},) (one per class column), got {tuple(counts.shape)}")
        logn = counts.to(torch.float32).clamp(min=1.0).log_()  # O(C), once per call, on device
    else:
        logn = weights  # never read
    log_eps = math.log(eps) if eps > 0 else float("-inf")
    ign = ignore_index if ignore_index is not None and _INT32_MIN <= ignore_index <= _INT32_MAX else -1
    launch = _fwd_launch(c, num_sets)
    grid = (triton.cdiv(n, launch.rows),)
    with _device_guard(logits):
        _FWD_KERNELS[launch.kernel][grid](
            logits, logits.stride(0), labels, weights, obj_w, logn, loss, obj_loss if has_obj else loss, grad,
            n, c, ct, ign, p_eff, q_eff, log_eps,
            S=num_sets, HAS_OBJ=has_obj, SEESAW=seesaw, BLOCK_C=launch.block_c, ROWS=launch.rows,
            num_warps=launch.num_warps)
    return loss, obj_loss, grad


@register_kernel("seesaw_bwd", "triton")
def seesaw_bwd(grad, grad_loss, grad_obj):
    return _bwd(grad, grad_loss, grad_obj, in_place=False)


@register_kernel("seesaw_bwd_inplace", "triton")
def seesaw_bwd_inplace(grad, grad_loss, grad_obj):
    """``seesaw_bwd`` written over ``grad`` (contiguous); elements scaled by exactly 1 are not touched."""
    return _bwd(grad, grad_loss, grad_obj, in_place=True)


def _bwd(grad, grad_loss, grad_obj, in_place):
    if grad.dtype not in _TL_DTYPES:
        fn = _torch_backend.seesaw_bwd_inplace if in_place else _torch_backend.seesaw_bwd
        return fn(grad, grad_loss, grad_obj)
    n, ct = grad.shape
    c = ct - 2 if grad_obj is not None else ct
    for name, v in (("grad_loss", grad_loss), ("grad_obj", grad_obj)):
        if v is not None and tuple(v.shape) != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {tuple(v.shape)}")
    if in_place and not grad.is_contiguous():
        raise ValueError("seesaw_bwd in place needs a contiguous grad")
    src = grad if grad.is_contiguous() else grad.contiguous()
    out = grad if in_place else torch.empty((n, ct), dtype=grad.dtype, device=grad.device)
    if out.numel() > 0:
        gl = grad_loss.to(torch.float32)
        go = grad_obj.to(torch.float32) if grad_obj is not None else gl
        launch = _bwd_launch(ct)
        grid = _bwd_grid(n, ct, launch)
        with _device_guard(grad):
            _seesaw_bwd_kernel[grid](src, gl, gl.stride(0), go, go.stride(0), out, n, ct, c,
                                     BLOCK_C=launch.block_c, ROWS=launch.rows, IN_PLACE=in_place,
                                     num_warps=launch.num_warps)
    if not in_place and not grad.is_contiguous():  # keep grad's layout, as the torch kernel does
        out = torch.empty_like(grad).copy_(out)
    return out


# --------------------------------------------------------------------------- ahead-of-time configs
AOT_CLASSES = (81, 1205, 8192, 32768)  # small, LVIS (1203 + 2 objectness), widest resident, looped
AOT_BWD_COLUMNS = (81, 1205)           # backward: narrow tile, widest tile


def _fwd_signature(dtype: str, kernel: str) -> Dict[str, str]:
    return {"x_ptr": f"*{dtype}", "stride_x": "i32", "labels_ptr": "*i64", "w_ptr": "*fp32", "ow_ptr": "*fp32",
            "logn_ptr": "*fp32", "loss_ptr": "*fp32", "obj_loss_ptr": "*fp32", "grad_ptr": f"*{dtype}",
            "N": "i32", "C": "i32", "CT": "i32", "ignore_index": "i32", "p": "fp32", "q": "fp32",
            "log_eps": "fp32", "S": "constexpr",
            "HAS_OBJ": "constexpr", "SEESAW": "constexpr", "BLOCK_C": "constexpr", "ROWS": "constexpr"}


def _bwd_signature(dtype: str) -> Dict[str, str]:
    return {"g_ptr": f"*{dtype}", "gl_ptr": "*fp32", "gl_stride": "i32", "go_ptr": "*fp32", "go_stride": "i32",
            "out_ptr": f"*{dtype}", "N": "i32", "CT": "i32", "C": "i32", "BLOCK_C": "constexpr", "ROWS": "constexpr",
            "IN_PLACE": "constexpr"}


def _aot_entries(classes=AOT_CLASSES, bwd_columns=AOT_BWD_COLUMNS) -> List[Tuple[str, object, dict, dict, Launch]]:
    out = []
    for dtype in _TL_DTYPES.values():
        for c in classes:
            # S (label sets): an unrolled loop in the resident kernel, a block axis in the looped
            # one; S = 2 is the mixed loss (compiled with Seesaw on)
            for s in (1, 2):
                for seesaw in ((False, True) if s == 1 else (True,)):
                    launch = _fwd_launch(c, s)
                    # objectness columns with the Seesaw configurations (mmdetection's use), none
                    # with plain cross-entropy: both branches compile, without doubling the set
                    consts = {"S": s, "HAS_OBJ": seesaw, "SEESAW": seesaw, "BLOCK_C": launch.block_c,
                              "ROWS": launch.rows}
                    name = (f"seesaw_fwd_{launch.kernel}_{dtype}_C{c}_S{s}_{'seesaw_obj' if seesaw else 'ce'}"
                            f"_B{launch.block_c}x{launch.rows}_w{launch.num_warps}")
                    out.append((name, _FWD_KERNELS[launch.kernel], _fwd_signature(dtype, launch.kernel), consts,
                                launch))
        for ct in bwd_columns:
            for in_place in (False, True):
                launch = _bwd_launch(ct)
                name = (f"seesaw_bwd{'_inplace' if in_place else ''}_{dtype}_CT{ct}"
                        f"_B{launch.block_c}x{launch.rows}_w{launch.num_warps}")
                consts = {"BLOCK_C": launch.block_c, "ROWS": launch.rows, "IN_PLACE": in_place}
                out.append((name, _seesaw_bwd_kernel, _bwd_signature(dtype), consts, launch))
    return out


def aot_configs() -> List[Tuple[str, object, dict, dict]]:
    """``(name, jit_fn, signature, constexprs)`` for every configuration the dispatch launches,
    for float32/float16/bfloat16 and representative widths (``AOT_CLASSES``): the forward for
    {cross-entropy, Seesaw} (and S ∈ {1, 2} for the looped kernel, where S is a constexpr) and
    the backward. Configurations come from the same chooser as the dispatch (:func:`launch_config`).
    Each launches with the ``num_warps`` in its name (``_w<k>``), also given by
    :func:`aot_num_warps`. Compile in a process without ``TRITON_INTERPRET=1``: under the
    interpreter ``triton.jit`` (and triton's own ``tl.max``/``tl.sum``) are interpreted functions."""
    return [e[:4] for e in _aot_entries()]


def aot_num_warps() -> Dict[str, int]:
    """``{name: num_warps}`` for the entries of :func:`aot_configs`."""
    return {e[0]: e[4].num_warps for e in _aot_entries()}


def launch_config(op: str, num_columns: int, num_sets: int = 1) -> Launch:
    """The configuration the dispatch uses: ``op`` is ``"seesaw_fwd"`` (``num_columns`` = C, the
    class columns) or ``"seesaw_bwd"`` (``num_columns`` = all columns)."""
    if op == "seesaw_fwd":
        return _fwd_launch(num_columns, num_sets)
    if op == "seesaw_bwd":
        return _bwd_launch(num_columns)
    raise ValueError(f"op must be 'seesaw_fwd' or 'seesaw_bwd', got {op!r}")
