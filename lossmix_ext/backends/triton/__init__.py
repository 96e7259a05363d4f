"""The ``triton`` backend: fused GPU kernels written in Triton.

Usable on CUDA tensors when triton imports and a GPU is present; on CPU tensors only under
the Triton interpreter (``TRITON_INTERPRET=1`` set before triton is imported), which is how
the kernels are tested on machines without a GPU. Kernels live one file per op family:
``seesaw.py`` (Seesaw / cross-entropy forward+backward) and ``mix.py`` (image mixing).
"""
from __future__ import annotations

import importlib
import os
from typing import Optional

DEVICE_TYPES = ("cuda", "cpu")

try:
    import triton  # noqa: F401
    _IMPORT_ERROR: Optional[str] = None
except Exception as exc:  # pragma: no cover - depends on the environment
    _IMPORT_ERROR = f"triton is not importable ({type(exc).__name__}: {exc}); pip install triton"


def device_guard(t):
    """Make ``t``'s GPU the current device around a launch (Triton launches on the current
    device; tensors on ``cuda:1`` with device 0 current would fail); a no-op on CPU tensors."""
    import contextlib

    import torch
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(device_type: str) -> Optional[str]:
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    if device_type == "cpu" and not interpreting():
        return "Triton runs CPU tensors only under the interpreter (set TRITON_INTERPRET=1 before importing triton)"
    if device_type == "cuda":
        import torch
        if not torch.cuda.is_available():
            return "no CUDA device is available"
    return None


if _IMPORT_ERROR is None:
    for _mod in ("seesaw", "mix"):
        try:
            importlib.import_module(f"{__name__}.{_mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{_mod}":
                raise
