"""Importing the frameworks the plug-ins are compared with (tests and benchmarks only).

timm imports torchvision. PyPI's Linux torchvision wheel is built against the CUDA build of
torch: next to torch's CPU wheel its compiled ops library does not load, and
``import torchvision`` then fails in ``torchvision/_meta_registrations.py`` ("operator
torchvision::nms does not exist") although everything timm's mixing and loss code uses is pure
Python. :func:`import_timm` retries once with the operator *schemas* of those ops declared
(no kernels: calling one raises), which is enough for the import; the reason is returned so
that callers can report it.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from typing import Optional, Tuple

import torch

# Schemas of the ops torchvision registers fake (meta) kernels for at import time.
_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, "
    "bool aligned) -> Tensor",
    "qroi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
    "SymInt width) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, "
    "SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
    "SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, "
    "Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
    "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, "
    "Tensor, Tensor)",
)
_LIB = None


def _declare_torchvision_schemas() -> None:
    global _LIB
    if _LIB is None:
        _LIB = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _TORCHVISION_SCHEMAS:
        name = schema.split("(", 1)[0]
        try:
            torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        except RuntimeError:
            _LIB.define(schema)


def import_torchvision() -> Tuple[Optional[object], str]:
    """(torchvision or None, a note: "" when it imported as it is)."""
    try:
        return importlib.import_module("torchvision"), ""
    except ImportError as exc:
        return None, f"torchvision is not installed ({exc})"
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        reason = f"torchvision's compiled ops did not load ({exc}); imported with their schemas only"
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _declare_torchvision_schemas()
    try:
        return importlib.import_module("torchvision"), reason
    except ImportError as exc:  # e.g. a dependency of torchvision's own (numpy) is missing
        return None, f"torchvision is not importable ({exc})"


def torchvision_detection_status() -> str:
    """``"ok"`` when torchvision imports and its compiled detection ops (``nms``, ``roi_align``)
    run next to the installed torch — what torchvision's detection models need — else why not
    (not installed; a build for another torch, whose ops do not load; imported with the ops'
    schemas only by :func:`import_torchvision`, whose ops have no kernels)."""
    try:
        tv = importlib.import_module("torchvision")
    except ImportError as exc:
        return f"torchvision is not installed ({exc})"
    except RuntimeError as exc:
        return f"torchvision's compiled ops do not load next to torch {torch.__version__} ({exc})"
    try:
        tv.ops.nms(torch.zeros((0, 4)), torch.zeros((0,)), 0.5)
        tv.ops.roi_align(torch.zeros((1, 1, 2, 2)), torch.zeros((0, 5)), (1, 1))
    except Exception as exc:  # noqa: BLE001 (any failure means: no detection models here)
        first = str(exc).split(". ")[0].splitlines()[0] if str(exc) else ""
        return f"torchvision {tv.__version__}'s compiled ops do not run next to torch {torch.__version__} " \
               f"({type(exc).__name__}: {first})"
    return "ok"


def import_timm() -> Tuple[Optional[object], str]:
    """(timm or None, a note): timm with :func:`import_torchvision`'s fallback."""
    try:
        importlib.import_module("timm.data.mixup")
        importlib.import_module("timm.loss")
        return importlib.import_module("timm"), ""
    except ImportError as exc:
        if "timm" in str(exc) and "torchvision" not in str(exc):
            return None, f"timm is not installed ({exc})"
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    tv, note = import_torchvision()
    if tv is None:
        return None, note
    for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
        del sys.modules[name]
    try:
        timm = importlib.import_module("timm")
        importlib.import_module("timm.data.mixup")
        importlib.import_module("timm.loss")
    except ImportError as exc:
        return None, f"timm is not importable ({exc})"
    return timm, note


def package_without_init(name: str) -> types.ModuleType:
    """Put a package object for ``name`` (e.g. ``mmdet.models``) in ``sys.modules`` whose
    ``__path__`` is the real package folder but whose ``__init__`` is not run, so that its
    submodules can be imported one by one (mmdetection's loss modules without the rest of
    ``mmdet.models``, which needs mmcv's compiled ops). Returns the existing module if any."""
    if name in sys.modules:
        return sys.modules[name]
    parent_name, _, child = name.rpartition(".")
    parent = importlib.import_module(parent_name)
    module = types.ModuleType(name, f"{name} (package object; its __init__ is not run)")
    module.__path__ = [os.path.join(p, child) for p in parent.__path__]
    module.__package__ = name
    sys.modules[name] = module
    setattr(parent, child, module)
    return module
