"""The ``cpu`` backend: fused native CPU kernels from the C++ extension ``lossmix_ext._C``.

Kernels (csrc/cpu): Seesaw / cross-entropy forward+backward in one pass per row (parallel over
rows, vectorised with a run-time choice of AVX2 or baseline SIMD), the row scaling of
``seesaw_bwd``, and image mixing (out of place with per-sample λ and any index, uint8 →
normalised float32 fused, NCHW and channels_last; its backward; in-place pairs).

Also ``seesaw_fwd_inplace`` (the gradient written over the logits, for ``inplace_grad=True``).
Kernels are compiled for AVX2+FMA and for the baseline instruction set; the best one the CPU
supports is used (:func:`isa`; ``LOSSMIX_EXT_CPU_ISA=baseline`` forces the baseline).

Half precision: float16 / bfloat16 logits, gradients and images are converted row by row / block
by block with vector conversions (F16C and bfloat16 shifts in the AVX2 build, integer lane
arithmetic in the baseline one; round to nearest even as PyTorch's) around the float32 maths,
in L1-sized buffers: images of uint8 / float16 / bfloat16 / float32 mix into float16 /
bfloat16 / float32 natively, and the backward and in-place pairs take float16 / bfloat16 too.

Argument combinations without a native kernel go explicitly to the ``torch`` backend's
kernel: the backward of CutMix ``boxes``; float64 mixed with another dtype; more than 2 label
sets; layouts where a sample is not one contiguous block.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._backend import register_kernel
from . import torch as _torch_backend
from ._native import IMPORT_ERROR as _IMPORT_ERROR, _C, sample_blocks as _sample_blocks, seesaw_kernels

DEVICE_TYPES = ("cpu",)


def unavailable_reason(device_type: str) -> Optional[str]:
    return _IMPORT_ERROR


def isa() -> Optional[str]:
    """The instruction set of the CPU kernels in use (``"avx2"`` or ``"baseline"``), None if not built."""
    return None if _C is None else _C.cpu_isa()


_HALF_F32 = (torch.float16, torch.bfloat16, torch.float32)
# (images, output) dtypes of the native kernels: float32 maths between any of these, and float64
_MIX_NATIVE = {(i, o) for i in (torch.uint8,) + _HALF_F32 for o in _HALF_F32} | {(torch.float64, torch.float64)}


def mix_images(images, lam, index, boxes, mean, std, scale, out_dtype):
    native = ((images.dtype, out_dtype) in _MIX_NATIVE and _sample_blocks(images)
              and (images.dim() == 4 or (mean is None and std is None and boxes is None)))
    if not native:
        return _torch_backend.mix_images(images, lam, index, boxes, mean, std, scale, out_dtype)
    return _C.mix_images_cpu(images, lam, index, mean, std, float(scale), boxes, out_dtype)


def mix_images_backward(grad, lam, index, boxes, std, scale, images_dtype):
    native = (boxes is None and grad.dtype in _HALF_F32 + (torch.float64,) and images_dtype == grad.dtype
              and (std is None or grad.dim() == 4))
    if not native:
        return _torch_backend.mix_images_backward(grad, lam, index, boxes, std, scale, images_dtype)
    return _C.mix_images_backward_cpu(grad, lam, index, std, float(scale))


def mix_images_inplace(images, lam, index, boxes=None):
    if images.dtype not in _HALF_F32 + (torch.float64,) or not _sample_blocks(images):
        return _torch_backend.mix_images_inplace(images, lam, index, boxes)
    _C.mix_images_inplace_cpu(images, lam, index, boxes)


if _C is not None:
    _kernels = {**seesaw_kernels("cpu"), "mix_images": mix_images, "mix_images_backward": mix_images_backward,
                "mix_images_": mix_images_inplace}
    for _op, _fn in _kernels.items():
        register_kernel(_op, "cpu")(_fn)
