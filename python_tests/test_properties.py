"""Property-based parity: the ``cpu`` and ``triton`` backends against the ``torch`` backend.

Every example is one call of the public API (``seesaw_loss``, ``seesaw_loss_mixed``,
``mixed_cross_entropy``, the ``SeesawLoss`` module, ``mix_images``, ``mix_images_``) made
once with ``backend="torch"`` (the reference maths) and once with the backend under test on
the same inputs; the outputs and the gradient w.r.t. the inputs (backward with random
upstream weights) must agree. Cases are drawn by hypothesis: N from 0 (empty batch), C from 1
to 64 and, in ``test_wide_rows``, C in {4097, 5000} with N <= 3; float32 / float64 / float16 /
bfloat16 (bfloat16 is not run through the Triton interpreter, which has no bfloat16
arithmetic: as in test_triton_seesaw.py it is GPU-only there); four logits layouts; label
mixes (background labels, ignore_index in and out of range, int32 labels), label weights with
zeros, reductions none/mean/sum, avg_factor (0 and a 0-d tensor included), λ scalar / 0-d / per row (0 and 1
included), p and q <= 0 (mitigation / compensation off), counts with zeros and up to 1e9,
``inplace_grad``; and non-finite logits — NaN, +inf, -inf at random positions, in the label
columns and the objectness columns. The NaN / +inf / -inf pattern of every output and
gradient must equal the torch backend's exactly; the finite values are compared with the
tolerances of ``TOL`` below.

The settings are derandomized (``derandomize=True``, no example database): every run draws
the same cases. Fuzz volume, examples per test and backend (``cpu``, ``triton``):

    test_seesaw_loss            120   (seesaw_loss and seesaw_loss_mixed)
    test_mixed_cross_entropy    100
    test_seesaw_module          100   (SeesawLoss, C+2 logits, labels in [0, C])
    test_wide_rows              12   (C in {4097, 5000}, N <= 3, all three functions)
    test_mix_images             100   (forward and gradient w.r.t. float images)
    test_mix_images_inplace     60
    test_lossmix_reduce         50   (no backend: against lossmix_ext._reference)

That is 1034 examples per run (492 per backend, plus 50); ``FUZZ_VOLUME`` below holds the
numbers. The triton examples run under the interpreter and are kept small (N <= 16, C <= 64,
images at most 6x4x8x8 or 6x4x3x8x8); the whole file takes about a minute on 2 (busy) cores.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import pytest
import torch

# hypothesis is a test extra, not a dependency: without it this module is skipped (saying why)
# instead of stopping the collection of every other test (a GPU machine's `pytest -m gpu`).
pytest.importorskip("hypothesis", reason="the property-based tests need hypothesis (pip install hypothesis)")
from hypothesis import HealthCheck, event, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import lossmix_ext as L
from lossmix_ext import _backend
from lossmix_ext import _reference as R

FUZZ_VOLUME = dict(seesaw=120, ce=100, module=100, wide=12, mix=100, mix_=60, reduce=50)

BACKENDS = ["cpu", "triton"]
# NaN / inf logits make numpy (under the Triton interpreter) warn about invalid values: expected.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter")

# Tolerances against the torch backend on the same inputs, (rtol, atol), by logits / images dtype.
# * float32: rtol 1e-5, atol 1e-6 (both backends compute in float32).
# * float64: rtol 1e-10, atol 1e-12 (both in float64; the triton backend hands float64 to torch).
# * float16 / bfloat16 logits: the losses are float32 maths on the same (already rounded)
#   inputs, so they keep float32's rtol (atol 1e-5); the gradients are float32 values rounded
#   once to the logits dtype, and two float32 values a few ulps apart can round to neighbouring
#   half-precision values: rtol 2e-3 / 1.6e-2 (two float16 / bfloat16 ulps), atol 1e-4 / 1e-3.
# * A reduced loss (a sum of N non-negative weighted rows) adds N·eps (float32 or float64) to
#   rtol; per-row losses ("none") and gradients get the plain values.
# * Image mixing: outputs by output dtype, gradients by images dtype; normalisation by std < 1
#   scales values up, so atol is 1e-5 for float32 (1e-3 / 8e-3 for float16 / bfloat16, one ulp).
TOL = {
    torch.float64: dict(loss=(1e-10, 1e-12), grad=(1e-10, 1e-12), mix=(1e-12, 1e-12)),
    torch.float32: dict(loss=(1e-5, 1e-6), grad=(1e-5, 1e-6), mix=(1e-5, 1e-5)),
    torch.float16: dict(loss=(1e-5, 1e-5), grad=(2e-3, 1e-4), mix=(1e-3, 1e-3)),
    torch.bfloat16: dict(loss=(1e-5, 1e-5), grad=(1.6e-2, 1e-3), mix=(8e-3, 8e-3)),
}
EPS = {torch.float64: 2.0 ** -52, torch.float32: 2.0 ** -23}

SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])

NAN, INF = float("nan"), float("inf")


def need(backend: str, op: str = "seesaw_fwd") -> None:
    reason = _backend.unavailable_reason(backend, "cpu", op)
    if reason is not None:
        pytest.skip(f"backend {backend!r} is not usable on CPU tensors here: {reason}")


def dtypes_for(backend: str):
    # bfloat16 only on the native CPU kernels: the Triton interpreter has no bfloat16 arithmetic.
    out = [torch.float32, torch.float64, torch.float16]
    return out + [torch.bfloat16] if backend == "cpu" else out


def opmath(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- comparison
def assert_match(got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float, what: str) -> None:
    """Same shape and dtype, the same NaN / +inf / -inf positions, finite values close."""
    assert tuple(got.shape) == tuple(want.shape), f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    g, w = got.detach().double(), want.detach().double()
    for name, f in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        mg, mw = f(g), f(w)
        if not torch.equal(mg, mw):
            bad = (mg != mw).nonzero()
            pos = [tuple(i) for i in bad[:6].tolist()]
            raise AssertionError(
                f"{what}: {name} pattern differs from the torch backend at {len(bad)} position(s), e.g. {pos}: "
                f"got {[g[p].item() for p in pos]}, torch backend {[w[p].item() for p in pos]}")
    fin = torch.isfinite(w)
    torch.testing.assert_close(g[fin], w[fin], rtol=rtol, atol=atol,
                               msg=lambda m: f"{what} (finite entries): {m}")


# --------------------------------------------------------------------------- Seesaw / CE cases
@dataclasses.dataclass
class LossCase:
    kind: str                  # "single" (seesaw_loss), "mixed" (seesaw_loss_mixed), "ce", "module"
    n: int
    c: int                     # classes (the module's logits have c + 2 columns)
    dtype: torch.dtype
    seed: int
    scale: float               # logits ~ scale · N(0, 1)
    pattern: str               # "randn", "ties" (rows of equal logits), "dominant" (label column + 8)
    layout: str                # "contig", "rows" (slice of a wider tensor), "cols" (stride 2), "transposed"
    specials: tuple            # ((row, where, value), ...): where in {"a", "b", "any", "obj"}
    p: float
    q: float
    eps: float
    reduction: str
    avg_factor: object         # None, a number, or "tensor 2.5" (a 0-d tensor)
    weights: str               # "none" or "rand" (in [0, 2), some exact zeros)
    lam: str                   # "float", "0d", "rows"
    lam_value: float
    counts: str                # "zeros", "small", "mixed" (zeros, small, up to 1e9)
    background: float          # fraction of background labels (module) / ignored labels (ce)
    ignore_index: int
    label_dtype: torch.dtype
    mixed: bool                # the module: with labels_b and lam
    loss_weight: float
    upstream: float            # upstream gradient of a reduced loss (1.0: the untouched in-place path)
    inplace_grad: bool


def _labels_strategy_fields(draw, kind):
    background = draw(st.sampled_from([0.0, 0.3, 1.0])) if kind in ("ce", "module") else 0.0
    ignore_index = draw(st.sampled_from([-100, -1, 0])) if kind == "ce" else -100
    return background, ignore_index


@st.composite
def loss_cases(draw, backend, kind, wide=False):
    if kind == "seesaw":
        kind = draw(st.sampled_from(["single", "mixed"]))
    dtype = draw(st.sampled_from(dtypes_for(backend)))
    if wide:
        n = draw(st.sampled_from([1, 2, 3, 0]))
        c = draw(st.sampled_from([4097, 5000]))
    else:
        n = draw(st.sampled_from(range(17)))        # 0 (empty batch) about one case in 17
        c = draw(st.integers(1, 64))
    layout = draw(st.sampled_from(["contig", "rows", "cols", "transposed"]))
    inplace_grad = layout == "contig" and draw(st.booleans())
    specials = ()
    if n > 0:
        wheres = ["a", "any"] + (["b"] if kind != "single" else []) + (["obj"] if kind == "module" else [])
        specials = tuple(draw(st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from(wheres),
                                                 st.sampled_from([NAN, INF, -INF])), max_size=4)))
    p = draw(st.sampled_from([0.8, 0.0, -0.5, 1.3, 2.0])) if kind != "ce" else 0.0
    q = draw(st.sampled_from([2.0, 0.0, -1.0, 1.0, 1.5, 3.0])) if kind != "ce" else 0.0
    eps = draw(st.sampled_from([1e-2, 1e-3, 0.5])) if kind != "ce" else 1e-2
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    avg_factor = draw(st.sampled_from([None, None, 0.0, 3.5, "tensor 2.5"])) if reduction != "sum" else None
    background, ignore_index = _labels_strategy_fields(draw, kind)
    return LossCase(
        kind=kind, n=n, c=c, dtype=dtype, seed=draw(st.integers(0, 2 ** 31 - 1)),
        scale=draw(st.sampled_from([1.0, 3.0, 0.1, 10.0])),
        pattern=draw(st.sampled_from(["randn", "ties", "dominant"])), layout=layout, specials=specials,
        p=p, q=q, eps=eps, reduction=reduction, avg_factor=avg_factor,
        weights=draw(st.sampled_from(["none", "rand"])), lam=draw(st.sampled_from(["float", "0d", "rows"])),
        lam_value=draw(st.sampled_from([0.3, 0.0, 1.0, 0.75])),
        counts=draw(st.sampled_from(["small", "zeros", "mixed"])), background=background,
        ignore_index=ignore_index, label_dtype=draw(st.sampled_from([torch.int64, torch.int32])),
        mixed=kind == "module" and draw(st.booleans()),
        loss_weight=draw(st.sampled_from([1.0, 0.5])) if kind == "module" else 1.0,
        upstream=draw(st.sampled_from([1.0, 0.5, -2.0])), inplace_grad=inplace_grad)


@dataclasses.dataclass
class LossInputs:
    x: torch.Tensor            # (n, ct) logits, the case's dtype, contiguous
    labels_a: torch.Tensor
    labels_b: torch.Tensor
    lam: object
    counts: torch.Tensor       # (c,), or (c + 1,) for the module's cum_samples
    label_weights: Optional[torch.Tensor]
    up_rows: torch.Tensor      # (n,) upstream gradient of per-row losses


def build_loss_inputs(case: LossCase) -> LossInputs:
    g = torch.Generator().manual_seed(case.seed)
    n, c, om = case.n, case.c, opmath(case.dtype)
    ct = c + 2 if case.kind == "module" else c
    labels = torch.randint(0, c, (2, n), generator=g)
    if case.background > 0:  # background (module) or ignored (ce) rows
        pick = torch.rand(2, n, generator=g) < case.background
        labels = torch.where(pick, torch.full_like(labels, c if case.kind == "module" else case.ignore_index), labels)
    x = torch.randn(n, ct, generator=g, dtype=torch.float64) * case.scale
    if case.pattern == "ties" and n > 0:
        x[::2] = 0.25 * case.scale                             # every other row: all logits equal
    elif case.pattern == "dominant" and n > 0:
        lab = labels[0].clamp(0, c - 1)
        x[torch.arange(n), lab] += 8.0
    cols_a = labels[0].clamp(0, c - 1)
    cols_b = labels[1].clamp(0, c - 1)
    for row, where, value in case.specials:
        if where == "a":
            col = int(cols_a[row])
        elif where == "b":
            col = int(cols_b[row])
        elif where == "obj":
            col = c + int(torch.randint(0, 2, (1,), generator=g))
        else:
            col = int(torch.randint(0, ct, (1,), generator=g))
        x[row, col] = value
    x = x.to(case.dtype)
    nc = c + 1 if case.kind == "module" else c
    if case.counts == "zeros":
        counts = torch.zeros(nc)
    elif case.counts == "small":
        counts = torch.randint(0, 50, (nc,), generator=g).float()
    else:
        counts = torch.randint(0, 50, (nc,), generator=g).float()
        counts *= 10.0 ** torch.randint(0, 8, (nc,), generator=g).float()   # up to ~5e8
        counts[torch.rand(nc, generator=g) < 0.3] = 0.0
    lw = None
    if case.weights == "rand":
        lw = torch.rand(n, generator=g) * 2
        lw[torch.rand(n, generator=g) < 0.2] = 0.0
        lw = lw.to(om)
    if case.lam == "float":
        lam = case.lam_value
    elif case.lam == "0d":
        lam = torch.tensor(case.lam_value, dtype=om)
    else:
        lam = torch.rand(n, generator=g, dtype=om)
        if n > 0:
            lam[0] = case.lam_value
        if n > 2:
            lam[1], lam[2] = 0.0, 1.0
    up_rows = torch.randn(n, generator=g, dtype=om)
    if n > 1:
        up_rows[1] = 0.0
    return LossInputs(x=x, labels_a=labels[0].to(case.label_dtype), labels_b=labels[1].to(case.label_dtype), lam=lam,
                      counts=counts.to(om) if case.kind != "module" else counts, label_weights=lw, up_rows=up_rows)


def with_layout(leaf: torch.Tensor, layout: str, inplace_grad: bool) -> torch.Tensor:
    """The same values as ``leaf`` in another layout (differentiable back to ``leaf``)."""
    n, ct = leaf.shape
    if layout == "rows":
        pad = torch.full((n, 3), 7.0, dtype=leaf.dtype)
        return torch.cat([leaf, pad], 1)[:, :ct]
    if layout == "cols":
        return torch.stack([leaf, torch.full_like(leaf, 7.0)], 2).reshape(n, 2 * ct)[:, ::2]
    if layout == "transposed":
        return leaf.t().contiguous().t()
    return leaf.clone() if inplace_grad else leaf   # inplace_grad needs a non-leaf


def avg_factor_arg(case: LossCase):
    if isinstance(case.avg_factor, str):
        return torch.tensor(float(case.avg_factor.split()[1]))
    return case.avg_factor


def avg_factor_value(case: LossCase) -> Optional[float]:
    a = avg_factor_arg(case)
    return float(a) if a is not None else None


def call_loss(case: LossCase, t: LossInputs, backend: str, x: torch.Tensor):
    common = dict(reduction=case.reduction, avg_factor=avg_factor_arg(case), backend=backend,
                  inplace_grad=case.inplace_grad)
    if case.kind == "single":
        return (L.seesaw_loss(x, t.labels_a, t.counts, p=case.p, q=case.q, eps=case.eps,
                              label_weights=t.label_weights, **common),)
    if case.kind == "mixed":
        return (L.seesaw_loss_mixed(x, t.labels_a, t.labels_b, t.lam, t.counts, p=case.p, q=case.q, eps=case.eps,
                                    label_weights=t.label_weights, **common),)
    if case.kind == "ce":
        return (L.mixed_cross_entropy(x, t.labels_a, t.labels_b, t.lam, label_weights=t.label_weights,
                                      ignore_index=case.ignore_index, **common),)
    module = L.SeesawLoss(p=case.p, q=case.q, num_classes=case.c, eps=case.eps, reduction="mean",
                          loss_weight=case.loss_weight, backend=backend, inplace_grad=case.inplace_grad)
    module.cum_samples.copy_(t.counts)
    extra = dict(labels_b=t.labels_b, lam=t.lam) if case.mixed else {}
    d = module(x, t.labels_a, label_weights=t.label_weights, avg_factor=avg_factor_arg(case),
               reduction_override=case.reduction, **extra)
    return d["loss_cls_objectness"], d["loss_cls_classes"], module.cum_samples


def run_loss(case: LossCase, t: LossInputs, backend: str):
    """Outputs and the gradient w.r.t. the logits of a weighted sum of the outputs."""
    leaf = t.x.clone().requires_grad_(True)
    outs = call_loss(case, t, backend, with_layout(leaf, case.layout, case.inplace_grad))
    total = 0
    for k, o in enumerate(outs):
        if not o.requires_grad:
            continue  # the module's count buffer
        coef = case.upstream * (1.0 if k == 0 else -0.75)  # different upstreams for objectness / classes
        total = total + (o * coef if o.dim() == 0 else (o * t.up_rows[:o.shape[0]]).sum() * coef)
    total.backward()
    grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
    return [o.detach() for o in outs], grad


def check_loss_case(case: LossCase, backend: str) -> None:
    note(repr(case))
    event(f"{case.kind} {str(case.dtype)[6:]}")
    event("non-finite logits" if case.specials else "finite logits")
    event("empty batch" if case.n == 0 else "non-empty batch")
    t = build_loss_inputs(case)
    want_outs, want_grad = run_loss(case, t, "torch")
    got_outs, got_grad = run_loss(case, t, backend)
    rtol, atol = TOL[case.dtype]["loss"]
    names = ["loss"] if len(got_outs) == 1 else ["loss_cls_objectness", "loss_cls_classes", "cum_samples"]
    for name, got, want in zip(names, got_outs, want_outs):
        r = rtol if got.dim() > 0 else rtol + case.n * EPS[opmath(case.dtype)]
        assert_match(got, want, r, atol, f"[{backend}] {name}")
    assert_match(got_grad, want_grad, *TOL[case.dtype]["grad"], f"[{backend}] grad w.r.t. logits")


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=FUZZ_VOLUME["seesaw"], **SETTINGS)
@given(data=st.data())
def test_seesaw_loss(backend, data):
    """``seesaw_loss`` and ``seesaw_loss_mixed``."""
    need(backend)
    check_loss_case(data.draw(loss_cases(backend, "seesaw"), label="case"), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=FUZZ_VOLUME["ce"], **SETTINGS)
@given(data=st.data())
def test_mixed_cross_entropy(backend, data):
    need(backend)
    check_loss_case(data.draw(loss_cases(backend, "ce"), label="case"), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=FUZZ_VOLUME["module"], **SETTINGS)
@given(data=st.data())
def test_seesaw_module(backend, data):
    """``SeesawLoss``: (N, C+2) logits, labels in [0, C] (C = background), optional labels_b / λ."""
    need(backend)
    check_loss_case(data.draw(loss_cases(backend, "module"), label="case"), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=FUZZ_VOLUME["wide"], **SETTINGS)
@given(data=st.data())
def test_wide_rows(backend, data):
    """C > 4096 (the widest register-resident rows and beyond), N <= 3."""
    need(backend)
    kind = data.draw(st.sampled_from(["seesaw", "ce", "module"]), label="kind")
    check_loss_case(data.draw(loss_cases(backend, kind, wide=True), label="case"), backend)


# --------------------------------------------------------------------------- image mixing
@dataclasses.dataclass
class MixCase:
    shape: tuple
    in_dtype: torch.dtype
    out_dtype: Optional[torch.dtype]
    channels_last: bool
    boxes: bool
    mean: bool
    std: bool
    scale: Optional[float]
    lam: str
    seed: int


@st.composite
def mix_cases(draw, backend):
    floats = [torch.float32, torch.float64, torch.float16] + ([torch.bfloat16] if backend == "cpu" else [])
    in_dtype = draw(st.sampled_from([torch.uint8] + floats))
    b = draw(st.integers(1, 6))
    four_d = draw(st.integers(0, 3)) > 0       # else (B, C, T, H, W) video: no boxes / mean / std
    shape = (b, draw(st.integers(1, 4))) + (() if four_d else (draw(st.integers(1, 3)),))
    shape += (draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    out_dtype = draw(st.sampled_from([None, None] + floats))
    return MixCase(shape=shape, in_dtype=in_dtype, out_dtype=out_dtype,
                   channels_last=four_d and draw(st.booleans()), boxes=four_d and draw(st.booleans()),
                   mean=four_d and draw(st.booleans()), std=four_d and draw(st.booleans()),
                   scale=draw(st.sampled_from([None, None, 0.5, 2.0])), lam=draw(st.sampled_from(["float", "0d", "rows"])),
                   seed=draw(st.integers(0, 2 ** 31 - 1)))


def build_mix_inputs(case: MixCase):
    g = torch.Generator().manual_seed(case.seed)
    b = case.shape[0]
    if case.in_dtype == torch.uint8:
        x = torch.randint(0, 256, case.shape, generator=g, dtype=torch.uint8)
    else:
        x = (torch.randn(case.shape, generator=g) * 2).to(case.in_dtype)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    om = opmath(case.in_dtype)
    if case.lam == "float":
        lam = 0.3
    elif case.lam == "0d":
        lam = torch.tensor(0.6, dtype=om)
    else:
        lam = torch.rand(b, generator=g, dtype=om)
        lam[0] = 1.0
        if b > 1:
            lam[1] = 0.0
    index = torch.randint(0, b, (b,), generator=g)     # repeats, fixed points, samples nobody picks
    boxes = mean = std = None
    if case.boxes:
        h, w = case.shape[-2:]
        y0 = torch.randint(0, h + 1, (b,), generator=g)
        x0 = torch.randint(0, w + 1, (b,), generator=g)
        y1 = y0 + (torch.rand(b, generator=g) * (h + 1 - y0)).long()
        x1 = x0 + (torch.rand(b, generator=g) * (w + 1 - x0)).long()
        boxes = torch.stack([y0, x0, y1, x1], 1)
        boxes[0] = torch.tensor([0, 0, h, w])                 # full box
        if b > 1:
            boxes[1] = torch.tensor([h // 2, w // 2, h // 2, w])  # empty
    if case.mean:
        mean = torch.randn(case.shape[1], generator=g) * 0.5
    if case.std:
        std = torch.rand(case.shape[1], generator=g) * 1.9 + 0.1
    return x, lam, index, boxes, mean, std


def run_mix(case: MixCase, inputs, backend: str):
    x, lam, index, boxes, mean, std = inputs
    leaf = x.clone().requires_grad_(True) if x.dtype.is_floating_point else x
    out = L.mix_images(leaf, lam, index, boxes=boxes, mean=mean, std=std, scale=case.scale, out_dtype=case.out_dtype,
                       backend=backend)
    grad = None
    if x.dtype.is_floating_point:
        gen = torch.Generator().manual_seed(case.seed + 1)
        up = torch.randn(out.shape, generator=gen).to(out.dtype)
        out.backward(up)
        grad = leaf.grad
    return out.detach(), grad


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=FUZZ_VOLUME["mix"], **SETTINGS)
@given(data=st.data())
def test_mix_images(backend, data):
    """``mix_images``: repeated indices, uint8 + mean / std (+ default scale), channels_last,
    CutMix boxes (full and empty included), float16/32/64 (and bfloat16 on cpu); the output and
    the gradient w.r.t. float images."""
    need(backend, "mix_images")
    case = data.draw(mix_cases(backend), label="case")
    note(repr(case))
    inputs = build_mix_inputs(case)
    want, want_grad = run_mix(case, inputs, "torch")
    got, got_grad = run_mix(case, inputs, backend)
    assert got.stride() == want.stride(), f"[{backend}] output strides {got.stride()} != {want.stride()}"
    assert_match(got, want, *TOL[want.dtype]["mix"], f"[{backend}] mix_images output")
    if want_grad is not None:
        assert got_grad.stride() == want_grad.stride() or got_grad.numel() <= 1
        assert_match(got_grad, want_grad, *TOL[want_grad.dtype]["mix"], f"[{backend}] mix_images grad")


def involutive_index(b: int, g: torch.Generator) -> torch.Tensor:
    """A random pairing of disjoint pairs, some samples left as fixed points."""
    perm = torch.randperm(b, generator=g)
    index = torch.arange(b)
    k = int(torch.randint(0, b // 2 + 1, (1,), generator=g))   # number of pairs
    for i in range(k):
        u, v = int(perm[2 * i]), int(perm[2 * i + 1])
        index[u], index[v] = v, u
    return index


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=FUZZ_VOLUME["mix_"], **SETTINGS)
@given(data=st.data())
def test_mix_images_inplace(backend, data):
    """``mix_images_`` with an involutive index (pairs and fixed points), any layout."""
    need(backend, "mix_images_")
    floats = [torch.float32, torch.float64, torch.float16] + ([torch.bfloat16] if backend == "cpu" else [])
    dtype = data.draw(st.sampled_from(floats), label="dtype")
    b = data.draw(st.integers(1, 7), label="b")
    rest = tuple(data.draw(st.lists(st.integers(1, 6), min_size=3, max_size=4), label="(C, *spatial)"))
    layout = data.draw(st.sampled_from(["contig", "channels_last", "strided"]), label="layout")
    lam_kind = data.draw(st.sampled_from(["float", "rows"]), label="lam")
    seed = data.draw(st.integers(0, 2 ** 31 - 1), label="seed")
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn((b,) + rest, generator=g) * 2).to(dtype)
    if layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.cat([x, x], -1)[..., ::2]
    index = involutive_index(b, g)
    lam = 0.35 if lam_kind == "float" else torch.rand(b, generator=g, dtype=opmath(dtype))
    boxes = None
    if x.dim() == 4 and data.draw(st.booleans(), label="boxes"):
        h, w = x.shape[-2:]
        y0, x0 = torch.randint(0, h + 1, (b,), generator=g), torch.randint(0, w + 1, (b,), generator=g)
        y1 = (y0 + torch.randint(0, h + 1, (b,), generator=g)).clamp(max=h)
        x1 = (x0 + torch.randint(0, w + 1, (b,), generator=g)).clamp(max=w)
        boxes = torch.stack([y0, x0, y1, x1], 1)  # empty, partial, edge and whole-image boxes
    # what mix_images (out of place, the reference) gives; fixed points stay as they are
    lam_t = torch.full((b,), lam, dtype=torch.float32) if isinstance(lam, float) else lam  # a number: float32
    want = R.mix_images(x, lam_t.to(opmath(dtype)), index, boxes).to(dtype)
    fixed = index == torch.arange(b)
    want[fixed] = x[fixed]
    got = x.clone()
    out = L.mix_images_(got, lam, index, boxes=boxes, backend=backend)
    assert out is got
    assert_match(got, want, *TOL[dtype]["mix"], f"[{backend}] mix_images_")


# --------------------------------------------------------------------------- lossmix_reduce (backend-free)
@settings(max_examples=FUZZ_VOLUME["reduce"], **SETTINGS)
@given(data=st.data())
def test_lossmix_reduce(data):
    """``lossmix_reduce`` against ``lossmix_ext._reference`` (values and gradients)."""
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    shape = (data.draw(st.integers(1, 8), label="b"),) + tuple(data.draw(st.lists(st.integers(1, 4), max_size=2),
                                                                          label="rest"))
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]), label="reduction")
    avg = data.draw(st.sampled_from([None, 2.5, 0.0]), label="avg_factor") if reduction != "sum" else None
    weighted = data.draw(st.booleans(), label="weighted")
    seed = data.draw(st.integers(0, 2 ** 31 - 1), label="seed")
    g = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(shape, generator=g, dtype=dtype) for _ in range(2))
    lam = torch.rand(shape[0], generator=g, dtype=dtype)
    w = torch.rand(shape[-1:], generator=g, dtype=dtype) if weighted else None
    outs = []
    for fn in (lambda a, b: L.lossmix_reduce(a, b, lam, weights=w, reduction=reduction, avg_factor=avg),
               lambda a, b: R.lossmix_reduce(a, b, lam, w, reduction, avg)):
        la, lb = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
        out = fn(la, lb)
        out.backward(torch.ones_like(out))
        outs.append((out.detach(), la.grad, lb.grad))
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    scale = 1.0 / (avg + R.F32_EPS) if avg is not None and reduction == "mean" else 1.0
    for k, (got, want) in enumerate(zip(*outs)):
        assert_match(got, want, rtol, 1e-6 * max(1.0, scale), f"lossmix_reduce output {k}")
