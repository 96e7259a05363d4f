"""Argument checking for every public entry point and registered op, in one place.

Two kinds of checks:

* **Metadata checks** (type, dtype, shape, device, option values) run in the Python
  wrappers. They read no tensor data, cost nothing on a GPU and are static under
  ``torch.compile``.
* **Value checks** (label range, finite counts, λ in [0, 1], mix index range) have to read
  data. They run inside the registered ops' real kernels (never in fake kernels), so they
  also run under ``torch.compile(fullgraph=True)``. Their behaviour is set by the
  validation mode (``LOSSMIX_EXT_VALIDATE`` or :func:`set_validation`):

  ``"auto"`` (default)
      CPU tensors: checked synchronously, bad values raise ``ValueError`` (inside a
      ``torch.compile`` graph a check in wrapper code becomes an in-graph assert that raises
      ``RuntimeError`` with the same message).
      GPU tensors: device-side asserts (``torch._assert_async``) — no host sync on the
      hot path; a violation surfaces as a CUDA error at the next synchronisation.
  ``"sync"``
      Checked synchronously on every device, ``ValueError`` on bad values (a host sync per
      check on a GPU: use it while debugging).
  ``"off"``
      No value checks. Kernels never read or write out of bounds for labels outside the
      documented range (such rows are skipped), but results are then meaningless.
"""
from __future__ import annotations

import contextlib
import math
import os
from numbers import Real
from typing import Iterator, Optional

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int64, torch.int32)
REDUCTIONS = ("none", "mean", "sum")
_MODES = ("auto", "sync", "off")


def _mode_from_env() -> str:
    raw = os.environ.get("LOSSMIX_EXT_VALIDATE", "auto").strip().lower()
    aliases = {"1": "sync", "true": "sync", "0": "off", "false": "off", "": "auto"}
    raw = aliases.get(raw, raw)
    if raw not in _MODES:
        raise ValueError(f"LOSSMIX_EXT_VALIDATE must be one of {_MODES}, got {raw!r}")
    return raw


_mode = _mode_from_env()
_MODE_CODES = {"auto": 0, "sync": 1, "off": 2}
_native_mode_setter = None  # the native kernels' copy of the mode (set by _ops when the extension loads)


def _set_native_mode_setter(setter) -> None:
    global _native_mode_setter
    _native_mode_setter = setter
    setter(_MODE_CODES[_mode])


def get_validation() -> str:
    """The current value-check mode: ``"auto"``, ``"sync"`` or ``"off"``."""
    return _mode


def set_validation(mode: str) -> str:
    """Set the value-check mode for this process; returns the previous mode."""
    global _mode
    if mode not in _MODES:
        raise ValueError(f"validation mode must be one of {_MODES}, got {mode!r}")
    prev, _mode = _mode, mode
    if _native_mode_setter is not None:
        _native_mode_setter(_MODE_CODES[mode])
    return prev


@contextlib.contextmanager
def validation(mode: str) -> Iterator[None]:
    """Context manager form of :func:`set_validation`."""
    prev = set_validation(mode)
    try:
        yield
    finally:
        set_validation(prev)


class LossMixAssertionError(ValueError, AssertionError):
    """A bad argument where mmdetection / mmpretrain ``assert``: both a ``ValueError`` and an
    ``AssertionError``, so code written against either framework (``except AssertionError``,
    ``pytest.raises(AssertionError)``) keeps working, and so does ``except ValueError``."""


def assert_arg(cond: bool, msg: str) -> None:
    """Raise :class:`LossMixAssertionError` with ``msg`` unless ``cond``."""
    if not cond:
        raise LossMixAssertionError(msg)


# --------------------------------------------------------------------------- metadata
def tensor(x, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def float_tensor(x, name: str, *, ndim: Optional[int] = None, allow=FLOAT_DTYPES) -> Tensor:
    tensor(x, name)
    if x.dtype not in allow:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in allow]}, got {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    return x


def index_tensor(x, name: str, n: int, device: torch.device) -> Tensor:
    tensor(x, name)
    if x.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must be an int64 (or int32) tensor, got {x.dtype}")
    if x.dim() != 1 or x.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(x.shape)}")
    same_device(x, name, device)
    return x


def same_device(x: Tensor, name: str, device: torch.device) -> None:
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but the scores are on {device}")


def row_vector(x, name: str, n: int, device: torch.device) -> Tensor:
    """A per-row float vector of shape (n,)."""
    float_tensor(x, name)
    if x.dim() != 1 or x.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(x.shape)}")
    same_device(x, name, device)
    return x


def lam_vector(lam, n: int, device: torch.device, name: str = "lam", check_values: bool = True) -> Tensor:
    """λ as a float32 (or float64) tensor of shape (n,); a Python number or 0-d tensor is broadcast.
    ``check_values=False``: metadata only (for an op that checks the values itself)."""
    if isinstance(lam, Real) and not isinstance(lam, bool):
        if not 0.0 <= float(lam) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {lam}")
        return torch.full((n,), float(lam), dtype=torch.float32, device=device)
    float_tensor(lam, name)
    same_device(lam, name, device)
    if lam.dim() == 0:
        lam = lam.expand(n)
    if lam.dim() != 1 or lam.shape[0] != n:
        raise ValueError(f"{name} must be a number, a 0-d tensor or have shape ({n},), got {tuple(lam.shape)}")
    if check_values:
        in_unit_interval(lam, name)
    return lam


def counts_vector(x, name: str, n: int, device: torch.device) -> Tensor:
    float_tensor(x, name)
    if x.dim() != 1 or x.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) (one count per class), got {tuple(x.shape)}")
    same_device(x, name, device)
    return x


def reduction(reduction: str, avg_factor=None) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if avg_factor is not None and reduction == "sum":
        # Same message as mmdetection's weight_reduce_loss.
        raise ValueError('avg_factor can not be used with reduction="sum"')
    return reduction


def _isfinite(v) -> bool:
    # inf - inf and nan - nan are nan: also traceable where `v` is a symbolic float (torch.compile
    # with dynamic=True), which math.isfinite cannot take
    return v - v == 0 if torch.compiler.is_compiling() else math.isfinite(v)


def seesaw_params(p, q, eps) -> None:
    for name, v in (("p", p), ("q", q), ("eps", eps)):
        if type(v) is float or type(v) is int:  # the usual case, without the ABC check
            if _isfinite(v):
                continue
        elif isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(float(v)):
            continue
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")


# --------------------------------------------------------------------------- values
def _fail(msg: str) -> None:
    raise ValueError(msg)


# The native CUDA value check (lossmix_ext._C.device_assert: prints the message, then a device-side
# assert), set by _ops when the extension has CUDA kernels; torch._assert_async drops the message
# on CUDA, so without it the message shows only with LOSSMIX_EXT_VALIDATE=sync.
_device_assert = None


def _set_device_assert(fn) -> None:
    global _device_assert
    _device_assert = fn


def _unwrapped(t: Tensor) -> Tensor:
    """``t`` under every torch.func wrapper: the real values (under ``vmap`` those of every sample:
    the batch dimension is there again)."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        t = functorch.get_unwrapped(t)
    return t


def _check(bad: Tensor, msg: str) -> None:
    """Raise (or assert on device) when the boolean tensor ``bad`` is True."""
    if _mode == "off":
        return
    if torch.compiler.is_compiling():  # traced wrapper code: an in-graph assert (RuntimeError)
        torch._assert_async(~bad, msg)
        return
    if torch._C._are_functorch_transforms_active():  # a value cannot be read through the wrappers
        bad = _unwrapped(bad).any()
    if bad.device.type == "cpu" or _mode == "sync":
        if bool(bad):
            _fail(msg)
    elif _device_assert is not None and bad.device.type == "cuda" and type(bad) is torch.Tensor:
        _device_assert(bad, msg)
    else:
        torch._assert_async(~bad, msg)


def labels_in_range(labels: Tensor, name: str, num_classes: int, ignore_index: Optional[int] = None,
                    background: bool = False) -> None:
    """Every label in [0, num_classes) or equal to ``ignore_index``; with ``background``, in
    [0, num_classes], num_classes being the background label."""
    if _mode == "off" or labels.numel() == 0:
        return
    bad = (labels < 0) | (labels >= (num_classes + 1 if background else num_classes))
    if ignore_index is not None:
        bad &= labels != ignore_index
    _check(bad.any(), _labels_range_msg(name, num_classes, ignore_index, background))


def finite(x: Tensor, name: str) -> None:
    if _mode == "off" or x.numel() == 0:
        return
    _check(~torch.isfinite(x).all(), f"{name} must be finite (found inf or nan)")


def in_unit_interval(x: Tensor, name: str) -> None:
    if _mode == "off" or x.numel() == 0:
        return
    _check(~((x >= 0) & (x <= 1)).all(), f"{name} must lie in [0, 1] (found a value outside, or nan)")


def boxes_in_image(boxes: Tensor, name: str, height: int, width: int) -> None:
    """(B, 4) boxes (y0, x0, y1, x1) with 0 <= y0 <= y1 <= height and 0 <= x0 <= x1 <= width."""
    if _mode == "off" or boxes.numel() == 0:
        return
    y0, x0, y1, x1 = boxes.unbind(1)
    bad = (y0 < 0) | (x0 < 0) | (y1 < y0) | (x1 < x0) | (y1 > height) | (x1 > width)
    _check(bad.any(), f"{name} must be (y0, x0, y1, x1) with 0 <= y0 <= y1 <= {height} and 0 <= x0 <= x1 <= {width}")


def involutive(index: Tensor, name: str) -> None:
    """``index[index[b]] == b`` for every b (a pairing of disjoint pairs and fixed points)."""
    if _mode == "off" or index.numel() == 0:
        return
    ar = torch.arange(index.shape[0], device=index.device)
    _check((index[index.long()] != ar).any(),
           f"{name} must pair samples (index[index[b]] == b for every b), e.g. pairing 'flip' or "
           "a random pairing of disjoint pairs")


# --------------------------------------------------------------------------- more argument helpers
# (metadata checks unless marked; value checks follow the validation mode like those above)
from ._backend import BACKENDS as _BACKENDS, BackendUnavailableError as _BackendUnavailableError  # noqa: E402
from ._backend import _device as _backend_device  # noqa: E402


def backend_arg(backend, name: str = "backend") -> None:
    """``None``, ``"auto"`` or a known backend name (any case / surrounding blanks): for callers
    that keep the name to resolve later (calls that resolve at once get the same errors from
    ``_backend.resolve``)."""
    if backend is None:
        return
    if not isinstance(backend, str):
        raise TypeError(f"{name} must be a string or None, got {type(backend).__name__}")
    if backend.strip().lower() not in ("auto",) + _BACKENDS:
        raise _BackendUnavailableError(f"unknown backend {backend!r}: {name} must be None, 'auto' or one of "
                                       f"{_BACKENDS}")  # also a ValueError


def device_arg(device, name: str = "device") -> Optional[torch.device]:
    """``None`` or whatever ``torch.device`` accepts, as a ``torch.device``."""
    return None if device is None else _backend_device(device, name)


def generator_arg(generator, name: str = "generator") -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}")


def real_arg(x, name: str) -> float:
    """A finite Python (or numpy) real number — not a bool, a string or a tensor — as a float."""
    if not isinstance(x, Real) or isinstance(x, bool):
        raise TypeError(f"{name} must be a finite number, got {type(x).__name__} {x!r}")
    if not math.isfinite(float(x)):
        raise ValueError(f"{name} must be a finite number, got {x!r}")
    return float(x)


def int_arg(x, name: str, minimum: Optional[int] = None) -> int:
    """A Python int (not a bool), ``>= minimum`` if given."""
    if not isinstance(x, int) or isinstance(x, bool):
        raise TypeError(f"{name} must be an int, got {type(x).__name__} {x!r}")
    if minimum is not None and x < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {x}")
    return x


def nonzero(x: Tensor, name: str) -> None:
    """Value check: no element of ``x`` is 0 (a divisor)."""
    if _mode == "off" or x.numel() == 0:
        return
    _check((x == 0).any(), f"{name} must not contain 0 (it divides; found a 0)")


def first_label_set_out_of_range(label_sets, num_classes: int, ignore_index: Optional[int] = None,
                                 background: bool = False) -> Optional[str]:
    """Error path helper: the message for the first ``(name, labels)`` pair with a label outside
    [0, num_classes) (or [0, num_classes] with ``background``, num_classes being the background
    label) that is not ``ignore_index``, else None. Reads the labels on the host (a sync): call it
    only once a check has already failed."""
    hi = num_classes + 1 if background else num_classes
    for name, labels in label_sets:
        if labels.numel() == 0:
            continue
        bad = (labels < 0) | (labels >= hi)
        if ignore_index is not None and not background:
            bad &= labels != ignore_index
        if bool(bad.any()):
            return _labels_range_msg(name, num_classes, ignore_index, background)
    return None


def _labels_range_msg(name: str, num_classes: int, ignore_index: Optional[int], background: bool) -> str:
    if background:
        return f"{name} must lie in [0, {num_classes}] (num_classes={num_classes} is the background label)"
    extra = f" or equal to ignore_index={ignore_index}" if ignore_index is not None else ""
    return f"{name} must lie in [0, {num_classes - 1}]{extra}"
