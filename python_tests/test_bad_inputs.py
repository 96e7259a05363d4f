"""Bad-input matrix over the whole public API: every case must raise a TypeError / ValueError
(subclasses such as LossMixAssertionError count) whose message names the argument, and leave
every tensor it was given — inputs, module buffers, generator states — unchanged.

The cases run in a child process (this file run as a script), once per session, so that a
native crash (a signal) fails the case that caused it instead of the whole test run. The
child streams one JSON line per case; when it dies, the case it was running is rerun alone in
a fresh process to confirm the crash, and the remaining cases resume in another child.

Each case is ``Case(id, build, exc, match)``: ``build()`` returns a :class:`Call` (function,
arguments, extra objects to watch), ``exc`` the expected exception class and ``match`` a
substring the message must contain (the argument's name). Cases of functions that take
``backend=`` are repeated for every backend usable on CPU tensors (cpu, torch, triton under
the interpreter).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, NamedTuple, Sequence

import pytest
import torch

if not torch.cuda.is_available():  # before triton is imported (as conftest.py does)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import lossmix_ext as L  # noqa: E402
from lossmix_ext import _validation as V  # noqa: E402

PREFIX = "@@CASE@@ "
CHILD_TIMEOUT_S = 300


# --------------------------------------------------------------------------- case plumbing
class Call:
    """``fn(*args, **kwargs)``; every tensor reachable from the arguments (and from ``watch``:
    modules' buffers and parameters, generators' states) is compared before and after."""

    def __init__(self, fn: Callable, *args, watch: Sequence[Any] = (), **kwargs):
        self.fn, self.args, self.kwargs, self.watch = fn, args, kwargs, tuple(watch)

    def __call__(self):
        return self.fn(*self.args, **self.kwargs)


class Case(NamedTuple):
    id: str
    build: Callable[[], Call]
    exc: type
    match: str


def _watched(obj: Any, name: str, out: List, seen: set) -> None:
    """(name, getter) for every tensor-valued state reachable from ``obj``."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        out.append((name, lambda t=obj: t.detach()))
    elif isinstance(obj, torch.Generator):
        out.append((f"{name}.state", lambda g=obj: g.get_state()))
    elif isinstance(obj, torch.nn.Module):
        for bname, _ in obj.named_buffers():
            out.append((f"{name}.{bname}", lambda m=obj, b=bname: m.get_buffer(b).detach()))
        for pname, _ in obj.named_parameters():
            out.append((f"{name}.{pname}", lambda m=obj, p=pname: m.get_parameter(p).detach()))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _watched(v, f"{name}[{k!r}]", out, seen)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _watched(v, f"{name}[{i}]", out, seen)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _watched(getattr(obj, f.name), f"{name}.{f.name}", out, seen)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("lossmix_ext"):
        for k, v in vars(obj).items():  # e.g. a LossMix's generator and mean / std
            _watched(v, f"{name}.{k}", out, seen)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shape, dtype and values, NaN equal to NaN (meta tensors: metadata only)."""
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    if a.device.type == "meta":
        return True
    if torch.equal(a, b):
        return True
    if a.is_floating_point() or a.is_complex():
        na, nb = torch.isnan(a), torch.isnan(b)
        return torch.equal(na, nb) and torch.equal(a[~na], b[~nb])
    return False


def run_case(case: Case) -> Dict[str, Any]:
    """Build and run one case in this process; what happened, as JSON-able data."""
    torch.manual_seed(0)
    res: Dict[str, Any] = {"id": case.id}
    try:
        call = case.build()
        entries: List = []
        seen: set = set()
        _watched(list(call.args), "args", entries, seen)
        _watched(call.kwargs, "kwargs", entries, seen)
        _watched(list(call.watch), "watch", entries, seen)
        _watched(call.fn, "fn", entries, seen)  # a module, a LossMix, ...
        _watched(getattr(call.fn, "__self__", None), "fn.__self__", entries, seen)  # ... or a bound method
        snaps = [(name, get, get().clone()) for name, get in entries]
    except Exception as exc:  # a broken case, not a library failure
        res["setup_error"] = f"{type(exc).__name__}: {exc}"
        return res
    try:
        call()
        res["raised"] = None
    except Exception as exc:  # noqa: BLE001 — the point is to see what came out
        res["raised"] = type(exc).__name__
        res["mro"] = [k.__name__ for k in type(exc).__mro__]
        res["message"] = str(exc)
    finally:
        V.set_validation("auto")
        L.set_default_backend("auto")
    res["changed"] = [name for name, get, snap in snaps if not _same(get(), snap)]
    return res


# --------------------------------------------------------------------------- the cases
BACKENDS = [b for b in ("cpu", "torch", "triton") if b in L.available_backends("cpu")]
CASES: List[Case] = []


def case(id: str, exc: type, match: str, *, backends: bool = False):
    """Register ``build`` (taking ``backend`` when ``backends``) as one case, or one per backend."""
    def deco(build):
        if backends:
            for be in BACKENDS:
                CASES.append(Case(f"{id}[{be}]", lambda be=be: build(be), exc, match))
        else:
            CASES.append(Case(id, build, exc, match))
        return build
    return deco


def t(*a, **k):
    return torch.tensor(*a, **k)


def randn(*shape, **k):
    return torch.randn(*shape, **k)


def labels4():
    return t([0, 1, 2, 3])


def counts5():
    return torch.ones(5) * 3


def nonleaf(*shape):
    """Scores that come out of an op (what ``inplace_grad=True`` overwrites)."""
    return (randn(*shape).requires_grad_() * 1.0)


# ---- seesaw_loss
def _seesaw(be=None, **over):
    args = dict(cls_score=randn(4, 5), labels=labels4(), cum_samples=counts5())
    args.update(over)
    a = [args.pop("cls_score"), args.pop("labels"), args.pop("cum_samples")]
    if be is not None:
        args.setdefault("backend", be)
    return Call(L.seesaw_loss, *a, **args)


case("seesaw_loss/cls_score_list", TypeError, "cls_score")(lambda: _seesaw(cls_score=[[1.0] * 5] * 4))
case("seesaw_loss/cls_score_int", TypeError, "cls_score")(lambda: _seesaw(cls_score=torch.ones(4, 5, dtype=torch.long)))
case("seesaw_loss/cls_score_3d", ValueError, "cls_score")(lambda: _seesaw(cls_score=randn(4, 5, 1)))
case("seesaw_loss/cls_score_no_columns", ValueError, "cls_score")(
    lambda: _seesaw(cls_score=randn(4, 0), cum_samples=torch.ones(0)))
case("seesaw_loss/labels_float", TypeError, "labels")(lambda: _seesaw(labels=t([0.0, 1, 2, 3])))
case("seesaw_loss/labels_short", ValueError, "labels")(lambda: _seesaw(labels=t([0, 1, 2])))
case("seesaw_loss/labels_2d", ValueError, "labels")(lambda: _seesaw(labels=labels4()[:, None]))
case("seesaw_loss/labels_meta", ValueError, "labels")(lambda: _seesaw(labels=t([0, 1, 2, 3], device="meta")))
case("seesaw_loss/labels_too_big", ValueError, "labels must lie in", backends=True)(
    lambda be: _seesaw(be, labels=t([0, 1, 2, 5])))
case("seesaw_loss/labels_negative", ValueError, "labels must lie in", backends=True)(
    lambda be: _seesaw(be, labels=t([0, -1, 2, 3])))
case("seesaw_loss/cum_samples_len", ValueError, "cum_samples")(lambda: _seesaw(cum_samples=torch.ones(4)))
case("seesaw_loss/cum_samples_int", TypeError, "cum_samples")(
    lambda: _seesaw(cum_samples=torch.ones(5, dtype=torch.long)))
case("seesaw_loss/cum_samples_nan", ValueError, "cum_samples", backends=True)(
    lambda be: _seesaw(be, cum_samples=t([1.0, float("nan"), 1, 1, 1])))
case("seesaw_loss/reduction", ValueError, "reduction")(lambda: _seesaw(reduction="avg"))
case("seesaw_loss/avg_factor_with_sum", ValueError, "avg_factor")(lambda: _seesaw(reduction="sum", avg_factor=2.0))
case("seesaw_loss/avg_factor_str", TypeError, "avg_factor")(lambda: _seesaw(avg_factor="4"))
case("seesaw_loss/avg_factor_2_elements", ValueError, "avg_factor")(lambda: _seesaw(avg_factor=torch.ones(2)))
case("seesaw_loss/p_nan", ValueError, "p must")(lambda: _seesaw(p=float("nan")))
case("seesaw_loss/q_str", ValueError, "q must")(lambda: _seesaw(q="2"))
case("seesaw_loss/eps_zero", ValueError, "eps")(lambda: _seesaw(eps=0.0))
case("seesaw_loss/label_weights_len", ValueError, "label_weights")(lambda: _seesaw(label_weights=torch.ones(3)))
case("seesaw_loss/label_weights_int", TypeError, "label_weights")(
    lambda: _seesaw(label_weights=torch.ones(4, dtype=torch.long)))
case("seesaw_loss/backend_unknown", ValueError, "backend")(lambda: _seesaw(backend="nope"))
case("seesaw_loss/backend_int", TypeError, "backend")(lambda: _seesaw(backend=3))
case("seesaw_loss/inplace_grad_str", TypeError, "inplace_grad")(lambda: _seesaw(inplace_grad="yes"))
case("seesaw_loss/inplace_grad_leaf", ValueError, "inplace_grad", backends=True)(
    lambda be: _seesaw(be, cls_score=randn(4, 5, requires_grad=True), inplace_grad=True))
case("seesaw_loss/inplace_grad_bad_labels_keeps_scores", ValueError, "labels", backends=True)(
    lambda be: _seesaw(be, cls_score=nonleaf(4, 5), labels=t([0, 1, 2, 7]), inplace_grad=True))


# ---- seesaw_loss_mixed
def _mixed(be=None, **over):
    args = dict(cls_score=randn(4, 5), labels_a=labels4(), labels_b=t([3, 2, 1, 0]), lam=torch.rand(4),
                cum_samples=counts5())
    args.update(over)
    a = [args.pop(k) for k in ("cls_score", "labels_a", "labels_b", "lam", "cum_samples")]
    if be is not None:
        args.setdefault("backend", be)
    return Call(L.seesaw_loss_mixed, *a, **args)


case("seesaw_loss_mixed/labels_a_range", ValueError, "labels_a", backends=True)(
    lambda be: _mixed(be, labels_a=t([0, 1, 9, 3])))
case("seesaw_loss_mixed/labels_b_range", ValueError, "labels_b", backends=True)(
    lambda be: _mixed(be, labels_b=t([0, 1, 2, -3])))
case("seesaw_loss_mixed/labels_b_short", ValueError, "labels_b")(lambda: _mixed(labels_b=t([0, 1])))
case("seesaw_loss_mixed/lam_number", ValueError, "lam")(lambda: _mixed(lam=1.5))
case("seesaw_loss_mixed/lam_shape", ValueError, "lam")(lambda: _mixed(lam=torch.rand(3)))
case("seesaw_loss_mixed/lam_values", ValueError, "lam", backends=True)(
    lambda be: _mixed(be, lam=t([0.5, 1.5, 0.5, 0.5])))
case("seesaw_loss_mixed/lam_nan", ValueError, "lam")(lambda: _mixed(lam=t([0.5, float("nan"), 0.5, 0.5])))
case("seesaw_loss_mixed/lam_str", TypeError, "lam")(lambda: _mixed(lam="0.5"))
case("seesaw_loss_mixed/inplace_grad_bad_labels_b_keeps_scores", ValueError, "labels_b", backends=True)(
    lambda be: _mixed(be, cls_score=nonleaf(4, 5), labels_b=t([0, 1, 2, 5]), inplace_grad=True))


# ---- mixed_cross_entropy
def _mce(be=None, **over):
    args = dict(logits=randn(4, 5), labels_a=labels4(), labels_b=t([3, 2, 1, 0]), lam=torch.rand(4))
    args.update(over)
    a = [args.pop(k) for k in ("logits", "labels_a", "labels_b", "lam")]
    if be is not None:
        args.setdefault("backend", be)
    return Call(L.mixed_cross_entropy, *a, **args)


case("mixed_cross_entropy/logits_1d", ValueError, "logits")(lambda: _mce(logits=randn(4)))
case("mixed_cross_entropy/labels_a_range", ValueError, "labels_a", backends=True)(
    lambda be: _mce(be, labels_a=t([0, 1, 5, 3])))
case("mixed_cross_entropy/labels_b_range", ValueError, "labels_b", backends=True)(
    lambda be: _mce(be, labels_b=t([0, -7, 2, 3])))
case("mixed_cross_entropy/ignore_index_float", TypeError, "ignore_index")(lambda: _mce(ignore_index=-100.0))
case("mixed_cross_entropy/lam_len", ValueError, "lam")(lambda: _mce(lam=torch.rand(5)))
case("mixed_cross_entropy/label_weights_2d", ValueError, "label_weights")(lambda: _mce(label_weights=torch.ones(4, 1)))
case("mixed_cross_entropy/inplace_grad_bad_labels_a_keeps_logits", ValueError, "labels_a", backends=True)(
    lambda be: _mce(be, logits=nonleaf(4, 5), labels_a=t([0, 1, 2, 11]), inplace_grad=True))


# ---- seesaw_module_loss
def _module_loss(be=None, **over):
    args = dict(cls_score=randn(4, 5), labels=t([0, 1, 2, 3]), cum_samples=torch.ones(4) * 2, num_classes=3)
    args.update(over)
    a = [args.pop(k) for k in ("cls_score", "labels", "cum_samples", "num_classes")]
    if be is not None:
        args.setdefault("backend", be)
    return Call(L.seesaw_module_loss, *a, **args)


case("seesaw_module_loss/cls_score_width", AssertionError, "cls_score")(lambda: _module_loss(cls_score=randn(4, 4)))
case("seesaw_module_loss/labels_range", ValueError, "labels must lie in [0, 3]", backends=True)(
    lambda be: _module_loss(be, labels=t([0, 1, 2, 4])))
case("seesaw_module_loss/labels_b_range", ValueError, "labels_b", backends=True)(
    lambda be: _module_loss(be, labels_b=t([0, 1, 2, 4]), lam=0.5))
case("seesaw_module_loss/labels_b_without_lam", ValueError, "lam")(lambda: _module_loss(labels_b=labels4()))
case("seesaw_module_loss/cum_samples_len", ValueError, "cum_samples")(lambda: _module_loss(cum_samples=torch.ones(6)))
case("seesaw_module_loss/cum_samples_list", TypeError, "cum_samples")(lambda: _module_loss(cum_samples=[1.0] * 4))
case("seesaw_module_loss/num_classes_str", ValueError, "num_classes")(lambda: _module_loss(num_classes="3"))
case("seesaw_module_loss/loss_weight_str", TypeError, "loss_weight")(lambda: _module_loss(loss_weight="1"))


# ---- SeesawLoss
def _module(**kw):
    kw.setdefault("num_classes", 3)
    return L.SeesawLoss(**kw)


def _fwd(m=None, cls_score=None, labels=None, *args, **kwargs):
    m = m if m is not None else _module()
    cls_score = cls_score if cls_score is not None else randn(6, 5)
    labels = labels if labels is not None else t([0, 1, 2, 3, 3, 0])
    return Call(m, cls_score, labels, *args, watch=[m], **kwargs)


case("SeesawLoss/ctor_use_sigmoid", AssertionError, "use_sigmoid")(lambda: Call(L.SeesawLoss, use_sigmoid=True))
case("SeesawLoss/ctor_num_classes", ValueError, "num_classes")(lambda: Call(L.SeesawLoss, num_classes=0))
case("SeesawLoss/ctor_reduction", ValueError, "reduction")(lambda: Call(L.SeesawLoss, reduction="avg"))
case("SeesawLoss/ctor_p", ValueError, "p must")(lambda: Call(L.SeesawLoss, p=float("inf")))
case("SeesawLoss/label_weights_len", ValueError, "label_weights")(lambda: _fwd(None, None, None, torch.ones(7)))
case("SeesawLoss/label_weights_2d", ValueError, "label_weights")(lambda: _fwd(None, None, None, torch.ones(6, 1)))
case("SeesawLoss/label_weights_int", TypeError, "label_weights")(
    lambda: _fwd(None, None, None, torch.ones(6, dtype=torch.long)))
case("SeesawLoss/cls_score_1d", ValueError, "cls_score")(lambda: _fwd(cls_score=randn(5)))
case("SeesawLoss/cls_score_width", AssertionError, "cls_score")(lambda: _fwd(cls_score=randn(6, 4)))
case("SeesawLoss/labels_range", ValueError, "labels must lie in [0, 3] (num_classes=3 is the background label)")(
    lambda: _fwd(labels=t([0, 1, 2, 4, 3, 0])))
case("SeesawLoss/labels_short", ValueError, "labels")(lambda: _fwd(labels=t([0, 1, 2])))
case("SeesawLoss/reduction_override", AssertionError, "reduction_override")(
    lambda: _fwd(reduction_override="avg"))
case("SeesawLoss/avg_factor_with_sum", ValueError, "avg_factor")(
    lambda: _fwd(avg_factor=2.0, reduction_override="sum"))
case("SeesawLoss/lam_without_labels_b", ValueError, "lam")(lambda: _fwd(lam=0.5))
case("SeesawLoss/lam_values", ValueError, "lam")(
    lambda: _fwd(labels_b=t([1, 1, 0, 3, 2, 2]), lam=t([0.5, 2.0, 0, 0, 0, 0])))
case("SeesawLoss/labels_b_range", ValueError, "labels_b")(lambda: _fwd(labels_b=t([1, 1, 0, 3, 2, 9]), lam=0.5))


def _nan_counts():
    m = _module()
    m.cum_samples[1] = float("nan")
    return _fwd(m)


case("SeesawLoss/cum_samples_nan", ValueError, "cum_samples")(_nan_counts)


def _module_backend_nope():
    m = _module()
    m.backend = "nope"  # set after construction: the forward must reject it before counting
    return _fwd(m)


case("SeesawLoss/backend_unknown_forward", ValueError, "backend")(_module_backend_nope)
case("SeesawLoss/backend_unknown", ValueError, "backend")(
    lambda: Call(lambda: L.SeesawLoss(num_classes=3, backend="nope")(randn(6, 5), t([0, 1, 2, 3, 3, 0]))))


def _module_inplace_bad_labels(be):
    m = _module(backend=be, inplace_grad=True)
    return _fwd(m, nonleaf(6, 5), t([0, 1, 2, 3, 3, 5]))


case("SeesawLoss/inplace_grad_bad_labels_keeps_scores", ValueError, "labels", backends=True)(
    _module_inplace_bad_labels)
case("SeesawLoss/get_accuracy_labels_len", ValueError, "labels")(
    lambda: Call(_module().get_accuracy, randn(6, 5), t([0, 1, 3])))
case("SeesawLoss/get_activation_width", AssertionError, "cls_score")(
    lambda: Call(_module().get_activation, randn(6, 4)))
case("SeesawLoss/get_cls_channels", AssertionError, "num_classes")(lambda: Call(_module().get_cls_channels, 4))


# ---- mix_images
def _images(b=4, c=3, h=5, w=6, dtype=torch.float32):
    if dtype == torch.uint8:
        return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8)
    return randn(b, c, h, w).to(dtype)


def _mix_call(fn, be=None, **over):
    """``fn(images, lam, index, **rest)`` on a good (4, 3, 5, 6) batch, with arguments overridden."""
    args = dict(images=_images(), lam=torch.rand(4), index=t([1, 0, 3, 2]))
    args.update(over)
    a = [args.pop(k) for k in ("images", "lam", "index")]
    if be is not None:
        args.setdefault("backend", be)
    return Call(fn, *a, **args)


def _mix(be=None, **over):
    return _mix_call(L.mix_images, be, **over)


# any (B, ...) batch mixes without boxes / mean / std (feature vectors, a (C, H, W) image as C
# samples: test_mix_feature_batches.py); these need (B, C, H, W)
case("mix_images/images_0d", ValueError, "images")(lambda: _mix(images=torch.tensor(1.0)))
case("mix_images/images_empty_batch", ValueError, "images")(
    lambda: _mix(images=randn(0, 3, 5, 6), lam=torch.rand(0), index=t([], dtype=torch.long)))
case("mix_images/boxes_on_features", ValueError, "boxes", backends=True)(
    lambda be: _mix(be, images=randn(4, 3), boxes=t([[0, 0, 1, 1]] * 4)))
case("mix_images/std_on_features", ValueError, "std", backends=True)(
    lambda be: _mix(be, images=randn(4, 3), std=[0.5, 0.5, 0.5]))
case("mix_images/mean_tensor_on_3d", ValueError, "mean")(
    lambda: _mix(images=randn(4, 3, 5), mean=t([0.5, 0.5, 0.5])))
case("mix_images/boxes_on_single_image", ValueError, "boxes")(
    lambda: _mix(images=randn(3, 5, 6), lam=torch.rand(3), index=t([2, 0, 1]), boxes=t([[0, 0, 1, 1]] * 3)))
case("mix_images/images_int", TypeError, "images")(lambda: _mix(images=torch.ones(4, 3, 5, 6, dtype=torch.int32)))
case("mix_images/images_list", TypeError, "images")(lambda: _mix(images=[[0.0]]))
case("mix_images/index_range", ValueError, "index", backends=True)(lambda be: _mix(be, index=t([1, 0, 3, 4])))
case("mix_images/index_float", TypeError, "index")(lambda: _mix(index=t([1.0, 0, 3, 2])))
case("mix_images/index_len", ValueError, "index")(lambda: _mix(index=t([1, 0, 2])))
case("mix_images/lam_values", ValueError, "lam", backends=True)(lambda be: _mix(be, lam=t([0.5, 0.5, -0.1, 0.5])))
case("mix_images/boxes_outside", ValueError, "boxes", backends=True)(
    lambda be: _mix(be, boxes=t([[0, 0, 6, 6]] * 4)))
case("mix_images/boxes_float", ValueError, "boxes")(lambda: _mix(boxes=torch.zeros(4, 4)))
case("mix_images/mean_str", TypeError, "mean")(lambda: _mix(mean="abc"))
case("mix_images/mean_len", ValueError, "mean")(lambda: _mix(mean=[0.5, 0.5]))
case("mix_images/mean_on_video", ValueError, "mean")(
    lambda: _mix(images=randn(4, 3, 2, 5, 6), mean=[0.5, 0.5, 0.5]))
case("mix_images/scale_str", TypeError, "scale")(lambda: _mix(scale="x"))
case("mix_images/std_zero", ValueError, "std")(lambda: _mix(std=[0.5, 0.0, 0.5]))
case("mix_images/std_zero_tensor", ValueError, "std", backends=True)(lambda be: _mix(be, std=t([0.5, 0.0, 0.5])))
case("mix_images/std_int_tensor", TypeError, "std")(lambda: _mix(std=t([1, 2, 3])))
case("mix_images/out_dtype_int", TypeError, "out_dtype")(lambda: _mix(out_dtype=torch.int64))
case("mix_images/backend_unknown", ValueError, "backend")(lambda: _mix(backend="nope"))


# ---- mix_images_ (in place: the images must not change on a failed call)
def _mix_(be=None, **over):
    return _mix_call(L.mix_images_, be, **over)


case("mix_images_/index_not_involutive", ValueError, "index", backends=True)(
    lambda be: _mix_(be, index=t([1, 2, 3, 0])))
case("mix_images_/index_range", ValueError, "index", backends=True)(lambda be: _mix_(be, index=t([1, 0, 3, 5])))
case("mix_images_/lam_values", ValueError, "lam", backends=True)(lambda be: _mix_(be, lam=t([0.5, 1.5, 0.5, 0.5])))
case("mix_images_/images_uint8", TypeError, "images")(lambda: _mix_(images=_images(dtype=torch.uint8)))
case("mix_images_/images_0d", ValueError, "images")(lambda: _mix_(images=torch.tensor(1.0)))
case("mix_images_/boxes_on_3d", ValueError, "boxes", backends=True)(
    lambda be: _mix_(be, images=randn(4, 5, 6), boxes=t([[0, 0, 1, 1]] * 4)))
case("mix_images_/features_uint8", TypeError, "images")(
    lambda: _mix_(images=torch.zeros(4, 3, dtype=torch.uint8)))
case("mix_images_/images_require_grad", ValueError, "images")(
    lambda: _mix_(images=randn(4, 3, 5, 6, requires_grad=True)))
case("mix_images_/images_expanded", ValueError, "images", backends=True)(
    lambda be: _mix_(be, images=randn(1, 3, 5, 6).expand(4, 3, 5, 6)))


# ---- sample_mix / sample_beta / lossmix_reduce
case("sample_mix/batch_size_zero", ValueError, "batch_size")(lambda: Call(L.sample_mix, 0))
case("sample_mix/pairing", ValueError, "pairing")(lambda: Call(L.sample_mix, 4, pairing="shuffle"))
case("sample_mix/alpha_zero", ValueError, "alpha")(lambda: Call(L.sample_mix, 4, alpha=0.0))
case("sample_mix/generator_int", TypeError, "generator")(lambda: Call(L.sample_mix, 4, generator=3))
case("sample_mix/device_bad", ValueError, "device")(lambda: Call(L.sample_mix, 4, device="nodevice"))
case("sample_beta/alpha_negative", ValueError, "alpha")(lambda: Call(L.sample_beta, (3,), -1.0))
case("sample_beta/shape_negative", ValueError, "shape")(lambda: Call(L.sample_beta, (-3,), 1.0))
case("sample_beta/dtype_int", TypeError, "dtype")(lambda: Call(L.sample_beta, (3,), 1.0, dtype=torch.int64))
case("lossmix_reduce/shapes", ValueError, "loss_a")(lambda: Call(L.lossmix_reduce, torch.rand(4), torch.rand(5), 0.5))
case("lossmix_reduce/zero_d", ValueError, "loss_a")(lambda: Call(L.lossmix_reduce, t(1.0), t(2.0), 0.5))
case("lossmix_reduce/weights_grow", ValueError, "weights")(
    lambda: Call(L.lossmix_reduce, torch.rand(4), torch.rand(4), 0.5, weights=torch.ones(2, 4)))
case("lossmix_reduce/lam_len", ValueError, "lam")(
    lambda: Call(L.lossmix_reduce, torch.rand(4), torch.rand(4), torch.rand(3)))
case("lossmix_reduce/avg_factor_str", TypeError, "avg_factor")(
    lambda: Call(L.lossmix_reduce, torch.rand(4), torch.rand(4), 0.5, avg_factor="4"))


# ---- LossMix and MixPlan (generator states are watched: a failed call draws nothing)
def _gen():
    return torch.Generator().manual_seed(0)


case("LossMix/alpha_negative", ValueError, "alpha")(lambda: Call(L.LossMix, alpha=-1.0))
case("LossMix/prob", ValueError, "prob")(lambda: Call(L.LossMix, prob=1.5))
case("LossMix/mean_str", TypeError, "mean")(lambda: Call(L.LossMix, mean="abc"))
case("LossMix/std_zero", ValueError, "std")(lambda: Call(L.LossMix, std=[1.0, 0.0, 1.0]))
case("LossMix/scale_str", TypeError, "scale")(lambda: Call(L.LossMix, scale="x"))
case("LossMix/backend_unknown", ValueError, "backend")(lambda: Call(L.LossMix, backend="nope"))
case("LossMix/generator_int", TypeError, "generator")(lambda: Call(L.LossMix, generator=3))
case("LossMix/call_0d", ValueError, "images", backends=True)(
    lambda be: Call(L.LossMix(generator=_gen(), backend=be), torch.tensor(0.5)))
case("LossMix/call_std_on_features", ValueError, "std")(
    lambda: Call(L.LossMix(generator=_gen(), std=[0.5, 0.5, 0.5]), randn(4, 3)))
case("LossMix/call_mean_len", ValueError, "mean")(
    lambda: Call(L.LossMix(generator=_gen(), mean=[0.5, 0.5]), _images()))
case("LossMix/call_cutmix_2d", ValueError, "images")(
    lambda: Call(L.LossMix(cutmix_alpha=1.0, generator=_gen()), randn(4, 10)))
case("LossMix/call_inplace_uint8", TypeError, "images")(
    lambda: Call(L.LossMix(pairing="flip", inplace=True, generator=_gen()), _images(dtype=torch.uint8)))
case("LossMix/sample_height_zero", ValueError, "height")(
    lambda: Call(L.LossMix(cutmix_alpha=1.0, generator=_gen()).sample, 4, 0, 5))


def _plan(n=4):
    return L.LossMix(generator=_gen()).sample(n)


case("MixPlan/cross_entropy_labels_len", ValueError, "labels")(
    lambda: Call(_plan().cross_entropy, randn(4, 7), t([0, 1, 2])))
case("MixPlan/cross_entropy_logits_rows", ValueError, "logits")(
    lambda: Call(_plan().cross_entropy, randn(3, 7), labels4()))
case("MixPlan/cross_entropy_labels_range", ValueError, "labels must lie in")(
    lambda: Call(_plan().cross_entropy, randn(4, 7), t([0, 1, 2, 7])))
case("MixPlan/apply_batch", ValueError, "images")(lambda: Call(_plan().apply, _images(b=5)))
case("MixPlan/mix_loss_targets_len", ValueError, "targets")(
    lambda: Call(_plan().mix_loss, lambda o, y: (o - y).pow(2).mean(1), randn(4, 3), randn(3, 3)))
case("MixPlan/targets_b_type", TypeError, "targets")(lambda: Call(_plan().targets_b, 5))


# ---- mix_detection
def _det(masks_b=None, sizes=((5, 6), (4, 4)), **kw):
    ims = [torch.rand(3, h, w) for h, w in sizes]
    tg = [{"boxes": torch.rand(2, 4), "labels": t([0, 1]), "masks": torch.zeros(2, *sizes[0])},
          {"boxes": torch.rand(1, 4), "labels": t([1]), "masks": masks_b if masks_b is not None
           else torch.zeros(1, *sizes[1])}]
    plan = kw.pop("plan", None) or _plan(2)
    return Call(L.mix_detection, ims, tg, plan, **kw)


case("mix_detection/masks_larger", ValueError, "targets[1]['masks']")(lambda: _det(masks_b=torch.zeros(1, 8, 8)))
case("mix_detection/masks_smaller", ValueError, "targets[1]['masks']")(lambda: _det(masks_b=torch.zeros(1, 2, 3)))
case("mix_detection/masks_list", TypeError, "masks")(lambda: _det(masks_b=[[0]]))
case("mix_detection/images_not_list", TypeError, "images")(
    lambda: Call(L.mix_detection, randn(2, 3, 4, 4), [{}, {}], _plan(2)))
case("mix_detection/image_2d", ValueError, "images[0]")(
    lambda: Call(L.mix_detection, [randn(4, 4), randn(4, 4)], [{}, {}], _plan(2)))
case("mix_detection/targets_len", ValueError, "targets")(
    lambda: Call(L.mix_detection, [randn(3, 4, 4), randn(3, 4, 4)], [{"boxes": torch.rand(0, 4),
                                                                       "labels": t([], dtype=torch.long)}], _plan(2)))
case("mix_detection/cutmix_plan", ValueError, "plan")(
    lambda: _det(plan=L.LossMix(alpha=0.0, cutmix_alpha=1.0, generator=_gen()).sample(2, 5, 6)))
case("mix_detection/size_divisible", ValueError, "size_divisible")(lambda: _det(size_divisible=0))


def _det_bad_index_unchecked():
    call = _det(plan=L.MixPlan(torch.ones(2), t([0, 5]), None, torch.ones(2)))
    inner = call.fn

    def run(*a, **k):
        with L.validation("off"):  # the partner lookup is on the host: checked in every mode
            return inner(*a, **k)
    call.fn = run
    return call


case("mix_detection/plan_index_validation_off", ValueError, "plan.index")(_det_bad_index_unchecked)


# ---- domain mixing
def _domain(i=1, n_s=4, n_t=3):
    return L.domain_mix_plans(n_s, n_t, "adaptation", generator=_gen())[i]


case("DomainMixPlan/mix_image_size", ValueError, "images_b")(
    lambda: Call(_domain().mix, _images(), randn(3, 3, 6, 6)))
case("DomainMixPlan/mix_too_few", ValueError, "images_b")(lambda: Call(_domain().mix, _images(), _images(b=1)))
case("DomainMixPlan/mix_missing_b", ValueError, "images_b")(lambda: Call(_domain().mix, _images()))
case("DomainMixPlan/mix_dtype", ValueError, "images_b")(
    lambda: Call(_domain().mix, _images(), _images(b=3, dtype=torch.uint8)))
case("DomainMixPlan/mix_images_a_batch", ValueError, "images_a")(lambda: Call(_domain(0).mix, _images(b=5)))


def _manual_plan_too_few():
    plan = L.DomainMixPlan("source", "target", torch.rand(4), t([0, 2, 1, 2]), "labels", None)  # no n_b recorded
    return Call(plan.mix, _images(), _images(b=2))


case("DomainMixPlan/mix_too_few_unrecorded", ValueError, "images_b")(_manual_plan_too_few)
case("DomainMixPlan/mix_loss_targets_b", ValueError, "targets_b")(
    lambda: Call(_domain(0).mix_loss, lambda o, y: (o - y).pow(2).mean(1), randn(4, 3), randn(4, 3), randn(2, 3)))
case("domain_mix_plans/phase", ValueError, "phase")(lambda: Call(L.domain_mix_plans, 4, 3, "finetune"))
case("domain_mix_plans/n_source", ValueError, "n_source")(lambda: Call(L.domain_mix_plans, 0, 3, "warmup"))
case("domain_mix_plans/generator_int", TypeError, "generator")(
    lambda: Call(L.domain_mix_plans, 4, 3, "warmup", generator=3))


# ---- process-wide settings and backend queries
case("set_validation/mode", ValueError, "mode")(lambda: Call(L.set_validation, "strict"))
case("validation/mode", ValueError, "mode")(lambda: Call(lambda: L.validation("strict").__enter__()))
case("set_default_backend/unknown", ValueError, "backend")(lambda: Call(L.set_default_backend, "nope"))
case("set_default_backend/int", TypeError, "backend")(lambda: Call(L.set_default_backend, 3))
case("available_backends/device", ValueError, "device")(lambda: Call(L.available_backends, "nodevice"))
case("backend_status/device", ValueError, "device")(lambda: Call(L.backend_status, "nodevice"))

_IDS = [c.id for c in CASES]
assert len(set(_IDS)) == len(_IDS), "duplicate case ids"


# ---- cases that check the harness itself (not part of the matrix)
def _raise_after(effect):
    def fn(*args):
        effect(*args)
        raise ValueError("x is bad")
    return fn


SELFTEST = [
    Case("selftest/mutates_input", lambda: Call(_raise_after(lambda x: x.add_(1)), randn(3)), ValueError, "x"),
    Case("selftest/nan_unchanged", lambda: Call(_raise_after(lambda x: None), t([1.0, float("nan")])),
         ValueError, "x"),
    Case("selftest/mutates_buffer", lambda: Call(_raise_after(lambda m: m.cum_samples.add_(1)), _module()),
         ValueError, "x"),
    Case("selftest/draws_from_generator",
         lambda: Call(_raise_after(lambda m: m.sample(4)), L.LossMix(generator=_gen())), ValueError, "x"),
    Case("selftest/ok", lambda: Call(int, "x"), ValueError, "x"),
    Case("selftest/killed", lambda: Call(os.kill, os.getpid(), signal.SIGKILL), ValueError, "x"),  # like a crash
    Case("selftest/ok_after", lambda: Call(float, "y"), ValueError, "y"),
]
_BY_ID = {c.id: c for c in CASES + SELFTEST}


# --------------------------------------------------------------------------- child process runner
def _child(ids: List[str]) -> "subprocess.CompletedProcess[str]":
    env = dict(os.environ)
    env["LOSSMIX_EXT_VALIDATE"] = "auto"
    env.pop("LOSSMIX_EXT_BACKEND", None)
    if not torch.cuda.is_available():
        env.setdefault("TRITON_INTERPRET", "1")
    try:
        return subprocess.run([sys.executable, os.path.abspath(__file__), "--child"], input=json.dumps(ids),
                              capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return subprocess.CompletedProcess(exc.cmd, -9999, out, "timed out")


def _parse(stdout: str) -> Dict[str, Dict[str, Any]]:
    got = {}
    for line in stdout.splitlines():
        if line.startswith(PREFIX):
            r = json.loads(line[len(PREFIX):])
            got[r["id"]] = r
    return got


def run_all(ids: List[str]) -> Dict[str, Dict[str, Any]]:
    """Every case's result; a case whose process died is reported as ``crashed``."""
    results: Dict[str, Dict[str, Any]] = {}
    todo = list(ids)
    while todo:
        proc = _child(todo)
        got = _parse(proc.stdout)
        results.update(got)
        if proc.returncode == 0 and all(i in got for i in todo):
            break
        pending = [i for i in todo if i not in got]
        if not pending:
            break
        suspect, rest = pending[0], pending[1:]
        # Rerun the case that was running when the child died, alone, to name the crasher.
        alone = _child([suspect])
        got = _parse(alone.stdout)
        if suspect in got and alone.returncode == 0:
            res = dict(got[suspect])
            res["note"] = (f"passed alone, but a child running it after other cases died "
                           f"(returncode {proc.returncode}): {proc.stderr[-2000:]}")
            res["crashed"] = proc.returncode
        else:
            res = {"id": suspect, "crashed": alone.returncode,
                   "note": f"the child died (returncode {alone.returncode}) running this case alone: "
                           f"{alone.stderr[-2000:]}"}
        results[suspect] = res
        todo = rest
    return results


@pytest.fixture(scope="module")
def matrix_results():
    start = time.perf_counter()
    res = run_all(_IDS)
    res["__elapsed__"] = time.perf_counter() - start
    return res


def test_matrix_size():
    assert len(CASES) >= 60


@pytest.mark.parametrize("case_id", _IDS)
def test_bad_input(case_id, matrix_results):
    c = _BY_ID[case_id]
    r = matrix_results.get(case_id)
    assert r is not None, f"{case_id}: no result from the child process"
    assert "crashed" not in r, f"{case_id}: the process crashed: {r.get('note')}"
    assert "setup_error" not in r, f"{case_id}: building the case failed: {r['setup_error']}"
    assert r["raised"] is not None, f"{case_id}: no exception raised (expected {c.exc.__name__})"
    assert c.exc.__name__ in r["mro"], (f"{case_id}: raised {r['raised']} ({r['mro']}), expected a "
                                        f"{c.exc.__name__}: {r['message']}")
    assert "TypeError" in r["mro"] or "ValueError" in r["mro"], \
        f"{case_id}: {r['raised']} is neither a TypeError nor a ValueError: {r['message']}"
    assert c.match in r["message"], f"{case_id}: message does not name {c.match!r}: {r['message']!r}"
    assert not r["changed"], f"{case_id}: the failed call changed {r['changed']}"


def test_harness_sees_changes():
    got = {c.id: run_case(c) for c in SELFTEST[:4]}
    assert got["selftest/mutates_input"]["changed"] == ["args[0]"]
    assert got["selftest/nan_unchanged"]["changed"] == []
    assert got["selftest/mutates_buffer"]["changed"] == ["args[0].cum_samples"]
    assert got["selftest/draws_from_generator"]["changed"] == ["args[0].generator.state"]


def test_harness_names_the_crasher():
    got = run_all(["selftest/ok", "selftest/killed", "selftest/ok_after"])
    assert "crashed" not in got["selftest/ok"] and got["selftest/ok"]["raised"] == "ValueError"
    assert got["selftest/killed"]["crashed"] == -signal.SIGKILL, got["selftest/killed"]
    assert "crashed" not in got["selftest/ok_after"] and got["selftest/ok_after"]["raised"] == "ValueError"


def test_matrix_is_quick(matrix_results):
    assert matrix_results["__elapsed__"] < 60, f"the bad-input matrix took {matrix_results['__elapsed__']:.1f} s"


# --------------------------------------------------------------------------- child entry point
def _child_main() -> None:
    ids = json.loads(sys.stdin.read())
    for i in ids:
        res = run_case(_BY_ID[i])
        sys.stdout.write(PREFIX + json.dumps(res) + "\n")
        sys.stdout.flush()


if __name__ == "__main__" and "--child" in sys.argv:
    _child_main()
