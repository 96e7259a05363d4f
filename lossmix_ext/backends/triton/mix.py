"""Triton kernels for image mixing: ``mix_images``, ``mix_images_backward``, ``mix_images_``.

Contracts: see the comments above ``mix_images`` and ``mix_images_`` in :mod:`lossmix_ext._ops`.

Layout. Every kernel works on the flat memory order of a batch whose samples are stored one
after another (NCHW-contiguous, or channels_last-contiguous for 4-D tensors): sample b owns
the elements ``[b·M, (b+1)·M)`` with M = numel / B, and the same offset in two samples is the
same (c, h, w). The grid is one program per (sample, chunk of BLOCK elements of that sample).
When normalisation or CutMix boxes need an element's (c, h, w), the flat offset o is split
with two divisions by constants chosen per layout::

    NCHW:          o = c·HW + h·W + w   ⇒ q1 = o // HW = c,  q2 = (o % HW) // W = h,  r2 = w
    channels_last: o = h·WC + w·C + c   ⇒ q1 = o // WC = h,  q2 = (o % WC) // C = w,  r2 = c

Divisions by a runtime constant use a precomputed magic multiplier (``umulhi`` + add + shift,
exact for 0 <= o < 2**31), so the index maths stays a few instructions per element and the
kernels stay bound by memory. The layout is a runtime flag, so one compiled kernel serves
both layouts. Other strides are first made contiguous (one extra copy).

Bytes moved (B·M elements of s_in bytes in, s_out bytes out):

* ``mix_images``: each output element reads x[b] and x[index[b]] and writes once:
  2·s_in + s_out per element, i.e. 1.5× a clone for same-dtype in/out. Sample-level
  skips: x[b] is not read where λ[b] == 0, the partner not where λ[b] == 1 and box b is
  empty (unmixed samples cost one read and one write, as a copy). Load masks depend only
  on the sample, so loads stay vectorised; the box is applied with a select.
* ``mix_images_backward``: a gather over the inverse of ``index`` (sorted on device): dx[j]
  reads g[j] and g[b] for every b with index[b] == j, accumulates in float32 registers and
  writes dx[j] once in the images' dtype. Deterministic, no atomics and no float32 scratch
  buffer, and correct for any index (repeats, samples nobody picked). For a permutation:
  2 reads + 1 write, as the forward.
* ``mix_images_``: one program per pair chunk reads x[b] and x[c] once and writes both:
  1 read + 1 write of the batch (1× a clone), CutMix boxes applied with a select. Fixed
  points and pairs with λ == 1 and no box on both sides are not touched.

Out-of-range index values (possible only with validation off) are skipped, never read.
float64 is routed to the torch kernels (maths in float64 there).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..._backend import register_kernel
from .. import torch as _torch_kernels
from . import device_guard

BLOCK = 1024          # elements of one sample per program (8 per thread with 4 warps)
NUM_WARPS = 4
_MAX_SAMPLE = 2 ** 31 - 1 - BLOCK   # per-sample offsets are int32

_TL_TYPE = {torch.uint8: "u8", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
IN_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32)
OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
GRAD_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --------------------------------------------------------------------------- helpers
def magic_divider(d: int) -> Tuple[int, int]:
    """(magic, shift) such that ``n // d == (umulhi(n, magic) + n) >> shift`` for 0 <= n < 2**31.

    ``magic`` is returned as the signed int32 with the same bit pattern (the kernels bitcast
    it back to uint32), so kernel arguments are always int32.
    """
    if not 1 <= d < 2 ** 31:
        raise ValueError(f"divisor must lie in [1, 2**31), got {d}")
    shift = 0
    while (1 << shift) < d:
        shift += 1
    magic = ((1 << 32) * ((1 << shift) - d)) // d + 1
    if magic >= 2 ** 31:
        magic -= 2 ** 32
    return magic, shift


@triton.jit
def _udiv(n, magic, shift):
    """n // d for int32 0 <= n < 2**31, with (magic, shift) = magic_divider(d)."""
    nu = n.to(tl.uint32)
    t = tl.umulhi(nu, magic.to(tl.uint32, bitcast=True))
    return ((t + nu) >> shift.to(tl.uint32)).to(tl.int32)


@triton.jit
def _chw(o, channels_last, magic1, shift1, d1, magic2, shift2, d2):
    """(c, h, w) of per-sample flat offsets ``o`` (see the module docstring)."""
    q1 = _udiv(o, magic1, shift1)
    r1 = o - q1 * d1
    q2 = _udiv(r1, magic2, shift2)
    r2 = r1 - q2 * d2
    cl = channels_last != 0
    c = tl.where(cl, r2, q1)
    h = tl.where(cl, q1, q2)
    w = tl.where(cl, q2, r2)
    return c, h, w


@triton.jit
def _inside_box(boxes_ptr, b, h, w):
    """(inside box b per element, box b non-empty)."""
    y0 = tl.load(boxes_ptr + b * 4 + 0)
    x0 = tl.load(boxes_ptr + b * 4 + 1)
    y1 = tl.load(boxes_ptr + b * 4 + 2)
    x1 = tl.load(boxes_ptr + b * 4 + 3)
    inside = (h >= y0) & (h < y1) & (w >= x0) & (w < x1)
    return inside, (y1 > y0) & (x1 > x0)


@triton.jit
def _splat(cond, like):
    """A per-program boolean broadcast to the shape of ``like`` (through int32: the
    interpreter mis-types a direct bool splat)."""
    return (cond.to(tl.int32) + tl.zeros_like(like)) != 0


_DNS = ["channels_last", "magic1", "shift1", "d1", "magic2", "shift2", "d2"]


# --------------------------------------------------------------------------- kernels
@triton.jit(do_not_specialize=_DNS)
def _mix_fwd_kernel(x_ptr, out_ptr, lam_ptr, index_ptr, boxes_ptr, mean_ptr, std_ptr,
                    B, M, n_chunks, scale,
                    channels_last, magic1, shift1, d1, magic2, shift2, d2,
                    HAS_NORM: tl.constexpr, HAS_BOX: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // n_chunks
    chunk = pid - b * n_chunks
    o = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = o < M
    lam = tl.load(lam_ptr + b)
    j = tl.load(index_ptr + b)
    j_ok = (j >= 0) & (j < B)
    j = tl.where(j_ok, j, 0)
    if HAS_NORM or HAS_BOX:
        c, h, w = _chw(o, channels_last, magic1, shift1, d1, magic2, shift2, d2)
    # Load masks are uniform per program (sample-level conditions only), which keeps the
    # loads vectorised; the box is applied with a select.
    m_self = mask & _splat(lam != 0.0, o)
    if HAS_BOX:
        inside, nonempty = _inside_box(boxes_ptr, b, h, w)
        m_part = mask & _splat(j_ok & ((lam != 1.0) | nonempty), o)
    else:
        m_part = mask & _splat(j_ok & (lam != 1.0), o)
    a = tl.load(x_ptr + b.to(tl.int64) * M + o, mask=m_self, other=0).to(tl.float32)
    p = tl.load(x_ptr + j.to(tl.int64) * M + o, mask=m_part, other=0).to(tl.float32)
    # λ·v(a) + (1−λ)·v(p) = v(λ·a + (1−λ)·p): v is affine and λ + (1−λ) = 1
    y = lam * a + (1.0 - lam) * p
    if HAS_BOX:
        y = tl.where(inside, p, y)
    y = y * scale
    if HAS_NORM:
        mu = tl.load(mean_ptr + c, mask=mask, other=0.0)
        sd = tl.load(std_ptr + c, mask=mask, other=1.0)
        y = (y - mu) / sd
    tl.store(out_ptr + b.to(tl.int64) * M + o, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_DNS)
def _mix_bwd_kernel(g_ptr, dx_ptr, lam_ptr, order_ptr, starts_ptr, boxes_ptr, std_ptr,
                    M, n_chunks, scale,
                    channels_last, magic1, shift1, d1, magic2, shift2, d2,
                    HAS_STD: tl.constexpr, HAS_BOX: tl.constexpr, BLOCK: tl.constexpr):
    # dx[j] = k·(a_j·g[j] + Σ_{b: index[b] == j} (1 − a_b)·g[b]),  k = scale / std[c],
    # a_b = λ[b] outside box b and 0 inside.
    pid = tl.program_id(0)
    j = pid // n_chunks
    chunk = pid - j * n_chunks
    o = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = o < M
    if HAS_STD or HAS_BOX:
        c, h, w = _chw(o, channels_last, magic1, shift1, d1, magic2, shift2, d2)
    lam_j = tl.load(lam_ptr + j)
    m_self = mask & _splat(lam_j != 0.0, o)
    acc = tl.load(g_ptr + j.to(tl.int64) * M + o, mask=m_self, other=0).to(tl.float32)
    if HAS_BOX:
        inside_j, _ = _inside_box(boxes_ptr, j, h, w)
        acc = tl.where(inside_j, 0.0, lam_j * acc)
    else:
        acc = lam_j * acc
    start = tl.load(starts_ptr + j)
    end = tl.load(starts_ptr + j + 1)
    for t in range(start, end):
        b = tl.load(order_ptr + t)
        lam_b = tl.load(lam_ptr + b)
        if HAS_BOX:
            inside_b, nonempty_b = _inside_box(boxes_ptr, b, h, w)
            m_b = mask & _splat((lam_b != 1.0) | nonempty_b, o)
            wt = tl.where(inside_b, 1.0, 1.0 - lam_b)
        else:
            m_b = mask & _splat(lam_b != 1.0, o)
            wt = 1.0 - lam_b
        gb = tl.load(g_ptr + b * M + o, mask=m_b, other=0).to(tl.float32)
        acc += wt * gb
    acc = acc * scale
    if HAS_STD:
        sd = tl.load(std_ptr + c, mask=mask, other=1.0)
        acc = acc / sd
    tl.store(dx_ptr + j.to(tl.int64) * M + o, acc.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_DNS)
def _mix_pairs_kernel(x_ptr, lam_ptr, index_ptr, boxes_ptr, B, M, n_chunks,
                      channels_last, magic1, shift1, d1, magic2, shift2, d2,
                      HAS_BOX: tl.constexpr, BLOCK: tl.constexpr):
    # The program of the smaller member b of a pair (b, c = index[b] > b) mixes both; inside
    # box b, x[b] takes x[c]'s old value (and inside box c, x[c] takes x[b]'s).
    pid = tl.program_id(0)
    b = pid // n_chunks
    chunk = pid - b * n_chunks
    o = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = o < M
    c = tl.load(index_ptr + b)
    active = (c > b) & (c < B)
    c = tl.where(active, c, b)
    # and only a true pair (index[c] == b): with value checks off, a non-involutive index must
    # not let two programs write the same sample (the CUDA kernel has the same guard)
    active = active & (tl.load(index_ptr + c) == b)
    lam_b = tl.load(lam_ptr + b)
    lam_c = tl.load(lam_ptr + c)
    if HAS_BOX:
        _, h, w = _chw(o, channels_last, magic1, shift1, d1, magic2, shift2, d2)
        in_b, any_b = _inside_box(boxes_ptr, b, h, w)
        in_c, any_c = _inside_box(boxes_ptr, c, h, w)
        st_b = active & ((lam_b != 1.0) | any_b)
        st_c = active & ((lam_c != 1.0) | any_c)
    else:
        st_b = active & (lam_b != 1.0)
        st_c = active & (lam_c != 1.0)
    m_load = mask & _splat(st_b | st_c, o)
    pb = x_ptr + b.to(tl.int64) * M + o
    pc = x_ptr + c.to(tl.int64) * M + o
    xb = tl.load(pb, mask=m_load, other=0).to(tl.float32)
    xc = tl.load(pc, mask=m_load, other=0).to(tl.float32)
    nb = lam_b * xb + (1.0 - lam_b) * xc
    nc = lam_c * xc + (1.0 - lam_c) * xb
    if HAS_BOX:
        nb = tl.where(in_b, xc, nb)
        nc = tl.where(in_c, xb, nc)
    tl.store(pb, nb.to(x_ptr.dtype.element_ty), mask=mask & _splat(st_b, o))
    tl.store(pc, nc.to(x_ptr.dtype.element_ty), mask=mask & _splat(st_c, o))


# --------------------------------------------------------------------------- configurations
# One place decides which compiled variant a call launches; the dispatch below and
# aot_configs() both use these functions.
def fwd_config(in_dtype: torch.dtype, out_dtype: torch.dtype, has_norm: bool, has_box: bool):
    """(signature, constexprs) of the forward kernel variant for these dtypes and flags."""
    sig = {"x_ptr": f"*{_TL_TYPE[in_dtype]}", "out_ptr": f"*{_TL_TYPE[out_dtype]}", "lam_ptr": "*fp32",
           "index_ptr": "*i64", "boxes_ptr": "*i64", "mean_ptr": "*fp32", "std_ptr": "*fp32",
           "B": "i32", "M": "i32", "n_chunks": "i32", "scale": "fp32",
           "channels_last": "i32", "magic1": "i32", "shift1": "i32", "d1": "i32",
           "magic2": "i32", "shift2": "i32", "d2": "i32",
           "HAS_NORM": "constexpr", "HAS_BOX": "constexpr", "BLOCK": "constexpr"}
    return sig, {"HAS_NORM": bool(has_norm), "HAS_BOX": bool(has_box), "BLOCK": BLOCK}


def bwd_config(grad_dtype: torch.dtype, dx_dtype: torch.dtype, has_std: bool, has_box: bool):
    sig = {"g_ptr": f"*{_TL_TYPE[grad_dtype]}", "dx_ptr": f"*{_TL_TYPE[dx_dtype]}", "lam_ptr": "*fp32",
           "order_ptr": "*i64", "starts_ptr": "*i64", "boxes_ptr": "*i64", "std_ptr": "*fp32",
           "M": "i32", "n_chunks": "i32", "scale": "fp32",
           "channels_last": "i32", "magic1": "i32", "shift1": "i32", "d1": "i32",
           "magic2": "i32", "shift2": "i32", "d2": "i32",
           "HAS_STD": "constexpr", "HAS_BOX": "constexpr", "BLOCK": "constexpr"}
    return sig, {"HAS_STD": bool(has_std), "HAS_BOX": bool(has_box), "BLOCK": BLOCK}


def pairs_config(dtype: torch.dtype, has_box: bool = False):
    sig = {"x_ptr": f"*{_TL_TYPE[dtype]}", "lam_ptr": "*fp32", "index_ptr": "*i64", "boxes_ptr": "*i64",
           "B": "i32", "M": "i32", "n_chunks": "i32",
           "channels_last": "i32", "magic1": "i32", "shift1": "i32", "d1": "i32",
           "magic2": "i32", "shift2": "i32", "d2": "i32", "HAS_BOX": "constexpr", "BLOCK": "constexpr"}
    return sig, {"HAS_BOX": bool(has_box), "BLOCK": BLOCK}


def aot_configs() -> List[tuple]:
    """``(name, jit_fn, signature, constexprs)`` for every variant the dispatch launches
    (all compiled with ``num_warps=4``)."""
    out = []
    flags = [(False, False), (True, False), (False, True), (True, True)]
    for di in IN_DTYPES:
        for do in OUT_DTYPES:
            for n, bx in flags:
                sig, ce = fwd_config(di, do, n, bx)
                out.append((f"mix_fwd_{_TL_TYPE[di]}_{_TL_TYPE[do]}_norm{int(n)}_box{int(bx)}",
                            _mix_fwd_kernel, sig, ce))
    for dg in GRAD_DTYPES:
        for dx in OUT_DTYPES:
            for s, bx in flags:
                sig, ce = bwd_config(dg, dx, s, bx)
                out.append((f"mix_bwd_{_TL_TYPE[dg]}_{_TL_TYPE[dx]}_std{int(s)}_box{int(bx)}",
                            _mix_bwd_kernel, sig, ce))
    for d in OUT_DTYPES:
        for bx in (False, True):
            sig, ce = pairs_config(d, bx)
            out.append((f"mix_pairs_{_TL_TYPE[d]}_box{int(bx)}", _mix_pairs_kernel, sig, ce))
    return out


# --------------------------------------------------------------------------- dispatch
def _format(t: Tensor) -> Optional[torch.memory_format]:
    """The flat layout the kernels can use for ``t``: contiguous, channels_last, or None."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return None


def _geometry(t: Tensor, fmt, need_pos: bool) -> Dict[str, int]:
    """Kernel arguments that split a per-sample flat offset into (c, h, w)."""
    if not need_pos:
        return dict(channels_last=0, magic1=1, shift1=0, d1=1, magic2=1, shift2=0, d2=1)
    _, c, h, w = t.shape
    cl = fmt == torch.channels_last
    d1, d2 = (w * c, c) if cl else (h * w, w)
    m1, s1 = magic_divider(max(d1, 1))
    m2, s2 = magic_divider(max(d2, 1))
    return dict(channels_last=int(cl), magic1=m1, shift1=s1, d1=d1, magic2=m2, shift2=s2, d2=d2)


def _supported(t: Tensor) -> bool:
    b = t.shape[0] if t.dim() else 0
    return b > 0 and t.numel() // b <= _MAX_SAMPLE and b < 2 ** 31


@register_kernel("mix_images", "triton")
def mix_images(images, lam, index, boxes, mean, std, scale, out_dtype):
    if (images.dtype not in IN_DTYPES or out_dtype not in OUT_DTYPES or images.numel() == 0
            or not _supported(images)):
        return _torch_kernels.mix_images(images, lam, index, boxes, mean, std, scale, out_dtype)
    out = torch.empty_like(images, dtype=out_dtype)
    fmt = _format(out)
    if fmt is None:  # unusual strides: compute contiguous, then copy into the output's layout
        tmp = mix_images(images.contiguous(), lam, index, boxes, mean, std, scale, out_dtype)
        out.copy_(tmp)
        return out
    x = images.contiguous(memory_format=fmt)
    index = index.long().contiguous()
    B = x.shape[0]
    M = x.numel() // B
    has_norm = mean is not None or std is not None
    has_box = boxes is not None
    lam32 = lam.to(torch.float32).contiguous()
    if has_norm:
        C = x.shape[1]
        mean_t = (mean if mean is not None else torch.zeros(C, device=x.device)).to(torch.float32).contiguous()
        std_t = (std if std is not None else torch.ones(C, device=x.device)).to(torch.float32).contiguous()
    else:
        mean_t = std_t = lam32  # unused
    boxes_t = boxes.long().contiguous() if has_box else index
    _, constexprs = fwd_config(x.dtype, out_dtype, has_norm, has_box)
    n_chunks = triton.cdiv(M, BLOCK)
    with device_guard(x):
        _mix_fwd_kernel[(B * n_chunks,)](
            x, out, lam32, index, boxes_t, mean_t, std_t, B, M, n_chunks, float(scale),
            **_geometry(x, fmt, has_norm or has_box), **constexprs, num_warps=NUM_WARPS)
    return out


def inverse_index(index: Tensor) -> Tuple[Tensor, Tensor]:
    """CSR of the inverse mapping: ``order[starts[j]:starts[j+1]]`` are the b with index[b] == j.

    Computed on device (stable sort + searchsorted), no host sync; values outside [0, B)
    belong to no j."""
    B = index.shape[0]
    sorted_idx, order = torch.sort(index, stable=True)
    starts = torch.searchsorted(sorted_idx, torch.arange(B + 1, device=index.device, dtype=index.dtype))
    return order.contiguous(), starts.contiguous()


@register_kernel("mix_images_backward", "triton")
def mix_images_backward(grad, lam, index, boxes, std, scale, images_dtype):
    if (grad.dtype not in GRAD_DTYPES or images_dtype not in OUT_DTYPES or grad.numel() == 0
            or not _supported(grad)):
        return _torch_kernels.mix_images_backward(grad, lam, index, boxes, std, scale, images_dtype)
    out = torch.empty_like(grad, dtype=images_dtype)
    fmt = _format(out)
    if fmt is None:
        tmp = mix_images_backward(grad.contiguous(), lam, index, boxes, std, scale, images_dtype)
        out.copy_(tmp)
        return out
    g = grad.contiguous(memory_format=fmt)
    B = g.shape[0]
    M = g.numel() // B
    has_std = std is not None
    has_box = boxes is not None
    lam32 = lam.to(torch.float32).contiguous()
    order, starts = inverse_index(index.long())
    std_t = std.to(torch.float32).contiguous() if has_std else lam32
    boxes_t = boxes.long().contiguous() if has_box else order
    _, constexprs = bwd_config(g.dtype, images_dtype, has_std, has_box)
    n_chunks = triton.cdiv(M, BLOCK)
    with device_guard(g):
        _mix_bwd_kernel[(B * n_chunks,)](
            g, out, lam32, order, starts, boxes_t, std_t, M, n_chunks, float(scale),
            **_geometry(g, fmt, has_std or has_box), **constexprs, num_warps=NUM_WARPS)
    return out


@register_kernel("mix_images_", "triton")
def mix_images_inplace(images, lam, index, boxes=None):
    if images.dtype not in OUT_DTYPES or images.numel() == 0 or not _supported(images):
        return _torch_kernels.mix_images_inplace(images, lam, index, boxes)
    fmt = _format(images)
    if fmt is None:  # mix a contiguous copy, write it back
        tmp = images.contiguous()
        mix_images_inplace(tmp, lam, index, boxes)
        images.copy_(tmp)
        return None
    B = images.shape[0]
    M = images.numel() // B
    has_box = boxes is not None
    index = index.long().contiguous()
    boxes_t = boxes.long().contiguous() if has_box else index
    _, constexprs = pairs_config(images.dtype, has_box)
    n_chunks = triton.cdiv(M, BLOCK)
    with device_guard(images):
        _mix_pairs_kernel[(B * n_chunks,)](images, lam.to(torch.float32).contiguous(), index, boxes_t,
                                           B, M, n_chunks, **_geometry(images, fmt, has_box), **constexprs,
                                           num_warps=NUM_WARPS)
    return None
