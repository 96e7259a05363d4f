"""The ``cuda`` backend: CUDA C++ kernels from the extension ``lossmix_ext._C`` (csrc/cuda).

Seesaw / cross-entropy forward+backward with a warp (C <= 2048) or a block per row, online
softmax, 16-byte vector loads where aligned, float32/float16/bfloat16/float64; the row scaling
of ``seesaw_bwd``; image mixing (per-sample λ, any index, CutMix boxes, uint8 → normalised,
NCHW and channels_last), its deterministic backward and the in-place pair mode. No host
synchronisation. Present only when the extension was built against a CUDA build of torch.

Argument combinations without a kernel go explicitly to the ``torch`` backend: more than 2
label sets; float64 mixed with another dtype in image mixing; layouts where a sample is not
one contiguous block.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._backend import register_kernel
from . import torch as _torch_backend
from ._native import IMPORT_ERROR as _IMPORT_ERROR, _C, sample_blocks as _sample_blocks, seesaw_kernels

DEVICE_TYPES = ("cuda",)

_NO_CUDA = ("lossmix_ext._C was built without its CUDA kernels (torch without CUDA, no CUDA toolkit, or no "
            "GPU visible at build time: rebuild with FORCE_CUDA=1 on a CUDA build of torch)")


def _build_reason() -> Optional[str]:
    """Why the last build left the CUDA kernels out, as setup.py recorded it (None if unknown)."""
    import json
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_build_info.json")
    try:
        with open(path) as f:
            reason = json.load(f).get("cuda")
    except (OSError, ValueError):
        return None
    return None if reason in (None, "built") else str(reason)


def unavailable_reason(device_type: str) -> Optional[str]:
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if not getattr(_C, "with_cuda", False):
        why = _build_reason()
        return f"{_NO_CUDA}; the build said: {why}" if why else _NO_CUDA
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    return None


_LOW = (torch.float16, torch.bfloat16, torch.float32)



def _mix_dtypes_ok(src: torch.dtype, dst: torch.dtype) -> bool:
    if src == torch.float64 or dst == torch.float64:
        return src == dst == torch.float64
    return (src == torch.uint8 or src in _LOW) and dst in _LOW


def mix_images(images, lam, index, boxes, mean, std, scale, out_dtype):
    if not (_mix_dtypes_ok(images.dtype, out_dtype) and _sample_blocks(images)):
        return _torch_backend.mix_images(images, lam, index, boxes, mean, std, scale, out_dtype)
    return _C.mix_images_cuda(images, lam, index, boxes, mean, std, float(scale), out_dtype)


def mix_images_backward(grad, lam, index, boxes, std, scale, images_dtype):
    if not _mix_dtypes_ok(grad.dtype, images_dtype) or grad.dtype == torch.uint8:
        return _torch_backend.mix_images_backward(grad, lam, index, boxes, std, scale, images_dtype)
    return _C.mix_images_backward_cuda(grad, lam, index, boxes, std, float(scale), images_dtype)


def mix_images_inplace(images, lam, index, boxes=None):
    if images.dtype not in _LOW + (torch.float64,) or not _sample_blocks(images):
        return _torch_backend.mix_images_inplace(images, lam, index, boxes)
    _C.mix_images_inplace_cuda(images, lam, index, boxes)


if _C is not None and getattr(_C, "with_cuda", False):
    _kernels = {**seesaw_kernels("cuda"), "mix_images": mix_images, "mix_images_backward": mix_images_backward,
                "mix_images_": mix_images_inplace}
    for _op, _fn in _kernels.items():
        register_kernel(_op, "cuda")(_fn)
