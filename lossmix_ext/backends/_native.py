"""What the ``cpu`` and ``cuda`` backends share: loading ``lossmix_ext._C`` and the Seesaw
adapters, which differ only in the device suffix of the extension's functions."""
from __future__ import annotations

from typing import Callable, Dict

import torch

from . import torch as _torch_backend
from .._ops import NATIVE_IMPORT_ERROR as IMPORT_ERROR, _native as _C  # noqa: F401 (IMPORT_ERROR: re-exported)


def sample_blocks(x: torch.Tensor) -> bool:
    """Each sample is one contiguous block in the same layout as ``empty_like(x)``."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def seesaw_kernels(device: str) -> Dict[str, Callable]:
    """``seesaw_fwd``, ``seesaw_fwd_inplace``, ``seesaw_bwd`` and ``seesaw_bwd_inplace`` calling ``_C.<name>_<device>``;
    more than 2 label sets go to the torch kernels."""
    fwd = getattr(_C, f"seesaw_fwd_{device}")
    fwd_inplace = getattr(_C, f"seesaw_fwd_inplace_{device}")
    bwd = getattr(_C, f"seesaw_bwd_{device}")

    def seesaw_fwd(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index):
        if labels.shape[0] not in (1, 2):
            return _torch_backend.seesaw_fwd(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index)
        return fwd(logits, labels, weights, obj_weights, counts, float(p), float(q), float(eps), ignore_index)

    def seesaw_fwd_inplace(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index):
        if labels.shape[0] not in (1, 2):
            return _torch_backend.seesaw_fwd_inplace(logits, labels, weights, obj_weights, counts, p, q, eps,
                                                     ignore_index)
        loss, obj_loss = fwd_inplace(logits, labels, weights, obj_weights, counts, float(p), float(q), float(eps),
                                     ignore_index)
        return loss, obj_loss, logits

    def seesaw_bwd(grad, grad_loss, grad_obj):
        return bwd(grad, grad_loss, grad_obj)

    def seesaw_bwd_inplace(grad, grad_loss, grad_obj):
        return bwd(grad, grad_loss, grad_obj, True)

    return {"seesaw_fwd": seesaw_fwd, "seesaw_fwd_inplace": seesaw_fwd_inplace, "seesaw_bwd": seesaw_bwd,
            "seesaw_bwd_inplace": seesaw_bwd_inplace}
