"""Backend registry and selection.

A *backend* is a module under ``lossmix_ext.backends`` that registers kernels for the ops
declared in :mod:`lossmix_ext._ops`. Each backend module defines

* ``DEVICE_TYPES``: the device types whose tensors it accepts (e.g. ``("cuda",)``), and
* ``unavailable_reason(device_type) -> Optional[str]``: ``None`` when usable on that device
  type, otherwise a sentence saying why not,

and calls :func:`register_kernel` for each op it implements when imported. Importing a
backend must never fail because an optional dependency is missing: it reports the reason
instead.

Selection, per call: the ``backend=`` argument; else ``LOSSMIX_EXT_BACKEND`` (read at import,
or :func:`set_default_backend`); else ``"auto"``, which picks, for the tensors' device type,
the first available backend of :data:`AUTO_ORDER` that implements the op.
"""
from __future__ import annotations

import importlib
import os
from typing import Callable, Dict, List, Optional, Tuple

import torch

BACKENDS: Tuple[str, ...] = ("torch", "triton", "cuda", "cpu")
AUTO_ORDER: Dict[str, Tuple[str, ...]] = {
    "cuda": ("triton", "cuda", "torch"),
    "cpu": ("cpu", "torch"),
}
_DEFAULT_ORDER: Tuple[str, ...] = ("torch",)

_kernels: Dict[Tuple[str, str], Callable] = {}
_modules: Dict[str, object] = {}
_import_errors: Dict[str, str] = {}
_default = os.environ.get("LOSSMIX_EXT_BACKEND", "auto").strip().lower() or "auto"


class BackendUnavailableError(RuntimeError, ValueError):
    """Raised when the requested backend cannot run the op on the given device, or is no
    backend at all. A ``RuntimeError`` (as before) and a ``ValueError`` (a bad ``backend=``
    argument); raised before any state (a counts buffer) changes."""


def register_kernel(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as backend ``backend``'s kernel for op ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {BACKENDS}")

    def deco(fn: Callable) -> Callable:
        _kernels[(op, backend)] = fn
        _resolved.clear()
        return fn

    return deco


def _load(name: str):
    if name in _modules:
        return _modules[name]
    if name in _import_errors:
        return None
    try:
        mod = importlib.import_module(f"lossmix_ext.backends.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"lossmix_ext.backends.{name}":
            _import_errors[name] = f"importing lossmix_ext.backends.{name} failed: {exc}"
        else:
            _import_errors[name] = f"the {name} backend is not part of this build"
        return None
    except Exception as exc:  # a broken optional backend must not break the package
        _import_errors[name] = f"importing lossmix_ext.backends.{name} failed: {type(exc).__name__}: {exc}"
        return None
    _modules[name] = mod
    return mod


def unavailable_reason(name: str, device_type: str, op: Optional[str] = None) -> Optional[str]:
    """``None`` if backend ``name`` can run ``op`` on ``device_type`` tensors, else why not."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}; known backends are {BACKENDS}"
    mod = _load(name)
    if mod is None:
        return _import_errors[name]
    if device_type not in mod.DEVICE_TYPES:
        return f"the {name} backend runs on {'/'.join(mod.DEVICE_TYPES)} tensors, not {device_type}"
    reason = mod.unavailable_reason(device_type)
    if reason is not None:
        return reason
    if op is not None and (op, name) not in _kernels:
        return f"the {name} backend has no kernel for {op}"
    return None


def _device(device, name: str = "device") -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name} must be a torch.device, a device string such as 'cpu' or 'cuda:0', or None, "
                         f"got {device!r}") from None


def available_backends(device: Optional[torch.device | str] = None, op: Optional[str] = None) -> List[str]:
    """Names of the backends usable for tensors on ``device`` (and implementing ``op``, e.g.
    ``"seesaw_fwd"``, if given).

    Without ``device``: the backends usable on at least one device type of this machine.
    """
    if device is not None:
        types = [_device(device).type]
    else:
        types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [b for b in BACKENDS if any(unavailable_reason(b, t, op) is None for t in types)]


def backend_status(device: Optional[torch.device | str] = None) -> Dict[str, str]:
    """``{backend: "available" or the reason it is not}`` for ``device`` (default: CUDA if present, else CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    t = _device(device).type
    return {b: (unavailable_reason(b, t) or "available") for b in BACKENDS}


def set_default_backend(name: str) -> str:
    """Set the process-wide backend (``"auto"`` or a backend name); returns the previous one."""
    global _default
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string ('auto' or one of {BACKENDS}), got {type(name).__name__}")
    name = name.strip().lower()
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {name!r}")
    prev, _default = _default, name
    _resolved.clear()
    return prev


@torch.compiler.assume_constant_result
def _resolve(op: str, backend: Optional[str], device_type: str) -> str:
    name = (backend or _default).strip().lower()
    if name != "auto":
        reason = unavailable_reason(name, device_type, op)
        if reason is not None:
            raise BackendUnavailableError(f"backend={name!r} cannot run {op} on {device_type}: {reason}")
        return name
    for cand in AUTO_ORDER.get(device_type, _DEFAULT_ORDER):
        if unavailable_reason(cand, device_type, op) is None:
            return cand
    raise BackendUnavailableError(f"no backend can run {op} on {device_type} tensors")


_resolved: Dict[Tuple[str, Optional[str], str, str], str] = {}  # successful resolutions (host-path cache)


def resolve(op: str, backend: Optional[str], device: torch.device) -> str:
    """The concrete backend name to use for ``op`` on ``device`` tensors."""
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a string or None, got {type(backend).__name__}")
    if torch.compiler.is_compiling():
        return _resolve(op, backend, device.type)
    key = (op, backend, device.type, _default)
    name = _resolved.get(key)
    if name is None:
        name = _resolved[key] = _resolve(op, backend, device.type)
    return name


def kernel(op: str, backend: str) -> Callable:
    """The registered kernel (the backend module is imported on first use)."""
    fn = _kernels.get((op, backend))
    if fn is None:
        _load(backend)
        fn = _kernels.get((op, backend))
    if fn is None:
        raise BackendUnavailableError(f"backend {backend!r} has no kernel for {op}")
    return fn
