"""The ``cpu`` backend: fused native CPU kernels from the C++ extension ``lossmix_ext._C``.

Kernels (csrc/cpu): Seesaw / cross-entropy forward+backward in one pass per row (parallel over
rows, vectorised with a run-time choice of AVX2 or baseline SIMD), the row scaling of
``seesaw_bwd``, and image mixing (out of place with per-sample λ and any index, uint8 →
normalised float32 fused, NCHW and channels_last; its backward; in-place pairs).

Also ``seesaw_fwd_inplace`` (the gradient written over the logits, for ``inplace_grad=True``).
Kernels are compiled for AVX2+FMA and for the baseline instruction set; the best one the CPU
supports is used (:func:`isa`; ``LOSSMIX_EXT_CPU_ISA=baseline`` forces the baseline).

Argument combinations without a native kernel go explicitly to the ``torch`` backend's
kernel: CutMix ``boxes``; mixing of float16/bfloat16 images or to another output dtype;
more than 2 label sets; layouts where a sample is not one contiguous block.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._backend import register_kernel
from . import torch as _torch_backend

DEVICE_TYPES = ("cpu",)

try:
    from .. import _C  # noqa: F401
    _IMPORT_ERROR: Optional[str] = None
except ImportError as exc:  # not built (LOSSMIX_EXT_NO_NATIVE=1, no compiler, ...)
    _C = None
    _IMPORT_ERROR = (f"lossmix_ext._C was not built: {exc} (reinstall with a C++ compiler: "
                     "pip install --no-build-isolation -e .)")


def unavailable_reason(device_type: str) -> Optional[str]:
    return _IMPORT_ERROR


def isa() -> Optional[str]:
    """The instruction set of the CPU kernels in use (``"avx2"`` or ``"baseline"``), None if not built."""
    return None if _C is None else _C.cpu_isa()


_MIX_NATIVE = {(torch.uint8, torch.float32), (torch.float32, torch.float32), (torch.float64, torch.float64)}


def _sample_blocks(x: torch.Tensor) -> bool:
    """Each sample is one contiguous block in the same layout as ``empty_like(x)``."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def seesaw_fwd(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index):
    if labels.shape[0] not in (1, 2):
        return _torch_backend.seesaw_fwd(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index)
    return _C.seesaw_fwd_cpu(logits, labels, weights, obj_weights, counts, float(p), float(q), float(eps),
                             ignore_index)


def seesaw_fwd_inplace(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index):
    if labels.shape[0] not in (1, 2):
        return _torch_backend.seesaw_fwd_inplace(logits, labels, weights, obj_weights, counts, p, q, eps,
                                                 ignore_index)
    loss, obj_loss = _C.seesaw_fwd_inplace_cpu(logits, labels, weights, obj_weights, counts, float(p), float(q),
                                               float(eps), ignore_index)
    return loss, obj_loss, logits


def seesaw_bwd(grad, grad_loss, grad_obj):
    return _C.seesaw_bwd_cpu(grad, grad_loss, grad_obj)


def mix_images(images, lam, index, boxes, mean, std, scale, out_dtype):
    native = (boxes is None and (images.dtype, out_dtype) in _MIX_NATIVE and _sample_blocks(images)
              and (images.dim() == 4 or (mean is None and std is None)))
    if not native:
        return _torch_backend.mix_images(images, lam, index, boxes, mean, std, scale, out_dtype)
    return _C.mix_images_cpu(images, lam, index, mean, std, float(scale))


def mix_images_backward(grad, lam, index, boxes, std, scale, images_dtype):
    native = (boxes is None and grad.dtype in (torch.float32, torch.float64) and images_dtype == grad.dtype
              and (std is None or grad.dim() == 4))
    if not native:
        return _torch_backend.mix_images_backward(grad, lam, index, boxes, std, scale, images_dtype)
    return _C.mix_images_backward_cpu(grad, lam, index, std, float(scale))


def mix_images_inplace(images, lam, index):
    if images.dtype not in (torch.float32, torch.float64) or not _sample_blocks(images):
        return _torch_backend.mix_images_inplace(images, lam, index)
    _C.mix_images_inplace_cpu(images, lam, index)


if _C is not None:
    for _op, _fn in (("seesaw_fwd", seesaw_fwd), ("seesaw_fwd_inplace", seesaw_fwd_inplace),
                     ("seesaw_bwd", seesaw_bwd), ("mix_images", mix_images),
                     ("mix_images_backward", mix_images_backward), ("mix_images_", mix_images_inplace)):
        register_kernel(_op, "cpu")(_fn)
