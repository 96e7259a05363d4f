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

DEVICE_TYPES = ("cuda",)

try:
    from .. import _C  # noqa: F401
    _IMPORT_ERROR: Optional[str] = None
except ImportError as exc:
    _C = None
    _IMPORT_ERROR = (f"lossmix_ext._C was not built: {exc} (reinstall with a C++ compiler: "
                     "pip install --no-build-isolation -e .)")

_NO_CUDA = ("lossmix_ext._C was built without its CUDA kernels (torch without CUDA, no CUDA toolkit, or no "
            "GPU visible at build time: rebuild with FORCE_CUDA=1 on a CUDA build of torch)")


def unavailable_reason(device_type: str) -> Optional[str]:
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if not getattr(_C, "with_cuda", False):
        return _NO_CUDA
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    return None


_LOW = (torch.float16, torch.bfloat16, torch.float32)


def _sample_blocks(x: torch.Tensor) -> bool:
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def _mix_dtypes_ok(src: torch.dtype, dst: torch.dtype) -> bool:
    if src == torch.float64 or dst == torch.float64:
        return src == dst == torch.float64
    return (src == torch.uint8 or src in _LOW) and dst in _LOW


def seesaw_fwd(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index):
    if labels.shape[0] not in (1, 2):
        return _torch_backend.seesaw_fwd(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index)
    return _C.seesaw_fwd_cuda(logits, labels, weights, obj_weights, counts, float(p), float(q), float(eps),
                              ignore_index)


def seesaw_fwd_inplace(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index):
    if labels.shape[0] not in (1, 2):
        return _torch_backend.seesaw_fwd_inplace(logits, labels, weights, obj_weights, counts, p, q, eps,
                                                 ignore_index)
    loss, obj_loss = _C.seesaw_fwd_inplace_cuda(logits, labels, weights, obj_weights, counts, float(p), float(q),
                                                float(eps), ignore_index)
    return loss, obj_loss, logits


def seesaw_bwd(grad, grad_loss, grad_obj):
    return _C.seesaw_bwd_cuda(grad, grad_loss, grad_obj)


def mix_images(images, lam, index, boxes, mean, std, scale, out_dtype):
    if not (_mix_dtypes_ok(images.dtype, out_dtype) and _sample_blocks(images)):
        return _torch_backend.mix_images(images, lam, index, boxes, mean, std, scale, out_dtype)
    return _C.mix_images_cuda(images, lam, index, boxes, mean, std, float(scale), out_dtype)


def mix_images_backward(grad, lam, index, boxes, std, scale, images_dtype):
    if not _mix_dtypes_ok(grad.dtype, images_dtype) or grad.dtype == torch.uint8:
        return _torch_backend.mix_images_backward(grad, lam, index, boxes, std, scale, images_dtype)
    return _C.mix_images_backward_cuda(grad, lam, index, boxes, std, float(scale), images_dtype)


def mix_images_inplace(images, lam, index):
    if images.dtype not in _LOW + (torch.float64,) or not _sample_blocks(images):
        return _torch_backend.mix_images_inplace(images, lam, index)
    _C.mix_images_inplace_cuda(images, lam, index)


if _C is not None and getattr(_C, "with_cuda", False):
    for _op, _fn in (("seesaw_fwd", seesaw_fwd), ("seesaw_fwd_inplace", seesaw_fwd_inplace),
                     ("seesaw_bwd", seesaw_bwd), ("mix_images", mix_images),
                     ("mix_images_backward", mix_images_backward), ("mix_images_", mix_images_inplace)):
        register_kernel(_op, "cuda")(_fn)
