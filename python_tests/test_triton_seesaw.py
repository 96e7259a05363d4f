"""Triton ``seesaw_fwd`` / ``seesaw_bwd`` kernels against the float64 oracle.

Without a GPU the kernels run under the Triton interpreter on CPU tensors (conftest sets
``TRITON_INTERPRET=1``); the ``gpu`` tests repeat the parity on CUDA with bfloat16 and large
shapes. The oracle is the torch backend's kernel (the reference maths) evaluated in float64
on the same — already rounded — inputs; for very wide rows, where the reference's C×C
mitigation matrix does not fit, a row-wise float64 transcription of the same formulas
(itself checked against the torch backend below).

Tolerances: float32 logits rtol 1e-5, atol 1e-6 (losses and gradients). float16 logits:
losses (float32 outputs, float32 maths on the same inputs) rtol 1e-5, atol 1e-5; gradients
(float16 outputs) rtol 1e-3, atol 1e-5 — half a float16 ulp (2^-11 relative) plus float32
rounding, and float16's subnormal spacing. bfloat16 (GPU only): gradients rtol 8e-3, atol 1e-4.
Logits of ±1e4: losses atol 1e-2 (a float32 ulp at the 4e4 adjusted logits is 3.9e-3).
"""
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

import lossmix_ext as L
from lossmix_ext import _ops
from lossmix_ext import _reference as R
from lossmix_ext.backends import torch as torch_backend
from oracle import seesaw_fwd_contract
from triton_aot import compile_module_configs

pytest.importorskip("triton")
from lossmix_ext.backends.triton import seesaw as TS  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"

MODES = {"ce": (0.0, 0.0), "seesaw": (0.8, 2.0), "mitigation": (0.8, 0.0), "compensation": (0.0, 2.0)}
TOL = {torch.float32: dict(loss=(1e-5, 1e-6), grad=(1e-5, 1e-6)),
       torch.float16: dict(loss=(1e-5, 1e-5), grad=(1e-3, 1e-5)),
       torch.bfloat16: dict(loss=(1e-5, 1e-5), grad=(8e-3, 1e-4))}


# --------------------------------------------------------------------------- oracles and inputs
def oracle(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index):
    """float64 result on the same inputs: the torch backend, or the row-wise transcription for wide rows."""
    d = (lambda t: None if t is None else t.double())
    if logits.shape[1] > 2048:
        return seesaw_fwd_contract(logits, labels, weights, obj_weights, counts, p, q, eps, ignore_index)
    return torch_backend.seesaw_fwd(logits.double(), labels, d(weights), d(obj_weights), d(counts), p, q, eps,
                                    ignore_index)


def make_logits(n, ct, dtype, layout, scale=3.0, device=DEV):
    """(n, ct) logits: contiguous, rows of a wider tensor ("rows"), or with column stride 2 ("cols")."""
    if layout == "contig":
        return (torch.randn(n, ct, device=device) * scale).to(dtype)
    if layout == "rows":
        return (torch.randn(n, ct + 7, device=device) * scale).to(dtype)[:, 3:3 + ct]
    if layout == "cols":
        return (torch.randn(n, 2 * ct, device=device) * scale).to(dtype)[:, ::2]
    raise ValueError(layout)


def make_case(n, c, sets, obj, ignore, device=DEV, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c + 1 if obj else c, (sets, n), generator=g)
    if ignore is not None and not obj:
        labels[0, 3::5] = ignore          # some ignored rows in set 0
        labels[-1, 1::4] = ignore         # and in the last set
    w = torch.rand(sets, n, generator=g) + 0.1
    w[:, 2::6] = 0.0                      # zero-weight rows
    ow = torch.rand(sets, n, generator=g) + 0.1 if obj else None
    counts = torch.randint(0, 40, (c,), generator=g).float()   # zeros are clamped to 1; ties
    ign = c if obj else ignore
    to = (lambda t: None if t is None else t.to(device))
    return to(labels), to(w), to(ow), to(counts), ign


def assert_outputs(got, want, dtype, loss_atol=None, grad_tol=None):
    (lr, la), (gr, ga) = TOL[dtype]["loss"], grad_tol or TOL[dtype]["grad"]
    la = la if loss_atol is None else loss_atol
    loss, obj, grad = got
    assert loss.dtype == torch.float32 and obj.dtype == torch.float32 and grad.dtype == dtype
    assert grad.is_contiguous()
    torch.testing.assert_close(loss.double(), want[0], rtol=lr, atol=la)
    torch.testing.assert_close(obj.double(), want[1], rtol=lr, atol=la)
    torch.testing.assert_close(grad.double(), want[2], rtol=gr, atol=ga)


def check_fwd(x, labels, w, ow, counts, p, q, ign, eps=1e-2, against_torch=True, loss_atol=None,
              torch_grad_tol=None):
    got = _ops.seesaw_fwd(x, labels, w, ow, counts, p, q, eps, ign, "triton")
    assert_outputs(got, oracle(x, labels, w, ow, counts, p, q, eps, ign), x.dtype, loss_atol)
    if against_torch:  # the torch kernel on the same dtype
        ref = _ops.seesaw_fwd(x, labels, w, ow, counts, p, q, eps, ign, "torch")
        assert_outputs(got, tuple(r.double() for r in ref), x.dtype, loss_atol, torch_grad_tol)
    return got


# --------------------------------------------------------------------------- the op, small C: full matrix
# (dtype, layout, ignore_index): an in-range ignore_index (1) really removes rows; -100 is out of range
INNER = [(torch.float32, "contig", None), (torch.float32, "rows", 1),
         (torch.float16, "rows", -100), (torch.float16, "cols", 1)]


@pytest.mark.parametrize("obj", [False, True])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("c", [2, 3, 81])
def test_fwd_small_c_matrix(c, n, mode, obj):
    p, q = MODES[mode]
    for sets in (1, 2):
        for dtype, layout, ignore in INNER:
            labels, w, ow, counts, ign = make_case(n, c, sets, obj, ignore)
            x = make_logits(n, c + 2 if obj else c, dtype, layout)
            check_fwd(x, labels, w, ow, counts, p, q, ign)


@pytest.mark.parametrize("c,obj,mode", [(2, False, "seesaw"), (3, True, "seesaw"), (81, False, "ce"),
                                        (81, True, "seesaw")])
def test_fwd_many_rows(c, obj, mode):
    """N = 64: several programs, a partial last program for small C."""
    labels, w, ow, counts, ign = make_case(64, c, 2, obj, -100)
    x = make_logits(64, c + 2 if obj else c, torch.float32, "rows")
    check_fwd(x, labels, w, ow, counts, *MODES[mode], ign)


# --------------------------------------------------------------------------- wide rows
@pytest.mark.parametrize("c,n,sets,obj,mode,dtype,layout", [
    (1203, 7, 1, False, "seesaw", torch.float32, "contig"),
    (1203, 7, 2, False, "ce", torch.float16, "rows"),
    (1203, 1, 2, True, "seesaw", torch.float32, "rows"),        # LVIS: 1203 classes + objectness = 1205
    (1205, 7, 2, False, "seesaw", torch.float32, "rows"),
    (1205, 7, 1, True, "mitigation", torch.float16, "contig"),
    (4097, 7, 1, False, "seesaw", torch.float32, "rows"),       # widest register-resident block (8192)
    (4097, 3, 2, True, "compensation", torch.float16, "cols"),
    (4097, 7, 2, False, "ce", torch.float32, "contig"),
])
def test_fwd_wide(c, n, sets, obj, mode, dtype, layout):
    labels, w, ow, counts, ign = make_case(n, c, sets, obj, 7)
    x = make_logits(n, c + 2 if obj else c, dtype, layout)
    check_fwd(x, labels, w, ow, counts, *MODES[mode], ign, against_torch=c <= 1205)


@pytest.mark.parametrize("c,sets,obj,mode,dtype", [
    (32768, 1, True, "seesaw", torch.float32),
    (32773, 2, False, "seesaw", torch.float32),
    (32773, 2, False, "ce", torch.float16),
])
def test_fwd_looped(c, sets, obj, mode, dtype):
    """C > 8192: the chunked kernel (online max/sum, then adjusted log-sum-exp, then gradient)."""
    assert TS.launch_config("seesaw_fwd", c, sets).kernel == "looped"
    labels, w, ow, counts, ign = make_case(4, c, sets, obj, 5)
    x = make_logits(4, c + 2 if obj else c, dtype, "rows")
    check_fwd(x, labels, w, ow, counts, *MODES[mode], ign, against_torch=False)


def test_rowwise_oracle_matches_torch_backend():
    """The wide-row oracle agrees with the torch backend where both fit (pure float64, no kernel)."""
    for obj, sets, (p, q) in ((False, 2, (0.8, 2.0)), (True, 1, (0.8, 2.0)), (False, 1, (0.0, 2.0))):
        labels, w, ow, counts, ign = make_case(9, 37, sets, obj, -100)
        x = torch.randn(9, 39 if obj else 37, dtype=torch.float64) * 3
        a = seesaw_fwd_contract(x, labels, w, ow, counts, p, q, 1e-2, ign)
        b = torch_backend.seesaw_fwd(x, labels, w.double(), None if ow is None else ow.double(), counts.double(),
                                     p, q, 1e-2, ign)
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- ties and extremes
def extreme_logits(n, c, device=DEV):
    x = torch.randn(n, c, device=device) * 3
    x[0] = 0.5                                        # all tied
    x[1, ::2], x[1, 1::2] = 1e4, -1e4                 # ±1e4, ties among the maxima
    x[2] = -1e4
    x[2, 0] = 1e4                                     # one dominant class
    x[3, : c // 2] = 7.0                              # half tied at the maximum
    return x


@pytest.mark.parametrize("c,obj,dtype", [(81, False, torch.float32), (81, True, torch.float16),
                                         (1203, False, torch.float32), (32768, False, torch.float32)])
def test_ties_and_extremes(c, obj, dtype):
    n = 6
    labels, w, ow, counts, ign = make_case(n, c, 2, obj, None)
    # rows 0-3: all tied / ±1e4 / one dominant class / half tied at the maximum
    labels[0, :4] = torch.tensor([0, 0, 0, 0])        # at a tie, at +1e4, the dominant class, tied maximum
    labels[1, :4] = torch.tensor([c - 1, 1, c - 1, c - 1])   # at -1e4 in rows 1 and 2
    ct = c + 2 if obj else c
    x = torch.zeros(n, ct, device=DEV)
    x[:, :c] = extreme_logits(n, c)
    if obj:
        x[:, c:] = torch.tensor([[1e4, -1e4], [-1e4, 1e4], [3.0, 3.0], [0.0, 1.0], [2.0, -1.0], [0.0, 0.0]])
    x = x.to(dtype)
    for mode in ("seesaw", "ce"):
        # The float64 oracle is held to the usual gradient tolerance. The float32 torch kernel forms
        # z' ≈ 1e4 and exp(z' − lse) directly, losing ~2^-10 absolute in the exponent, i.e. ~1e-3
        # relative in the probabilities: it is compared with rtol 2e-3.
        got = check_fwd(x, labels, w, ow, counts, *MODES[mode], ign, against_torch=c <= 1205, loss_atol=1e-2,
                        torch_grad_tol=(2e-3, 1e-5))
        assert torch.isfinite(got[0]).all() and torch.isfinite(got[2].float()).all()


# --------------------------------------------------------------------------- the public API (forward and backward)
def _f64_leaf(x):
    return x.detach().double().requires_grad_(True)


@pytest.mark.parametrize("reduction,weighted,avg", [("mean", False, None), ("sum", True, None),
                                                    ("none", True, None), ("mean", True, 11.0)])
@pytest.mark.parametrize("c", [81, 1203])
def test_seesaw_loss_public(c, reduction, weighted, avg):
    n = 7
    x = make_logits(n, c, torch.float32, "rows").requires_grad_(True)
    labels = torch.randint(0, c, (n,), device=DEV)
    counts = torch.randint(0, 50, (c,), device=DEV).float()
    lw = torch.rand(n, device=DEV) if weighted else None
    up = torch.randn(n, device=DEV) if reduction == "none" else torch.tensor(1.7, device=DEV)
    out = L.seesaw_loss(x, labels, counts, label_weights=lw, reduction=reduction, avg_factor=avg, backend="triton")
    out.backward(up)
    x64 = _f64_leaf(x)
    ref = R.seesaw_loss(x64, labels, counts.double(), label_weights=None if lw is None else lw.double(),
                        reduction=reduction, avg_factor=avg)
    ref.backward(up.double())
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_seesaw_loss_mixed_public(reduction):
    n, c = 7, 81
    x = make_logits(n, c, torch.float32, "contig").requires_grad_(True)
    la, lb = torch.randint(0, c, (n,), device=DEV), torch.randint(0, c, (n,), device=DEV)
    lam = torch.rand(n, device=DEV)
    counts = torch.randint(0, 50, (c,), device=DEV).float()
    lw = torch.rand(n, device=DEV)
    out = L.seesaw_loss_mixed(x, la, lb, lam, counts, label_weights=lw, reduction=reduction, backend="triton")
    up = torch.randn(n, device=DEV) if reduction == "none" else torch.tensor(1.0, device=DEV)
    out.backward(up)
    x64 = _f64_leaf(x)
    ref = R.seesaw_loss_mixed(x64, la, lb, lam.double(), counts.double(), label_weights=lw.double(),
                              reduction=reduction)
    ref.backward(up.double())
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction,avg", [("mean", None), ("sum", None), ("none", None), ("mean", 5.0)])
def test_mixed_cross_entropy_public(reduction, avg):
    n, c = 9, 81
    x = make_logits(n, c, torch.float32, "rows").requires_grad_(True)
    la, lb = torch.randint(0, c, (n,), device=DEV), torch.randint(0, c, (n,), device=DEV)
    ignore = 4 if reduction == "mean" else -100          # in range (a real class id) or not
    la[2], lb[5], lb[6] = ignore, ignore, ignore
    lam = torch.rand(n, device=DEV)
    lw = torch.rand(n, device=DEV)
    out = L.mixed_cross_entropy(x, la, lb, lam, label_weights=lw, ignore_index=ignore, reduction=reduction,
                                avg_factor=avg, backend="triton")
    up = torch.randn(n, device=DEV) if reduction == "none" else torch.tensor(0.6, device=DEV)
    out.backward(up)
    x64 = _f64_leaf(x)
    ref = R.mixed_cross_entropy(x64, la, lb, lam.double(), label_weights=lw.double(), ignore_index=ignore,
                                reduction=reduction, avg_factor=avg)
    ref.backward(up.double())
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)
    if reduction == "mean" and avg is None:   # scalar λ: exactly λ·CE(y_a) + (1−λ)·CE(y_b)
        got = L.mixed_cross_entropy(x.detach(), la, lb, 0.3, ignore_index=ignore, backend="triton")
        want = (0.3 * F.cross_entropy(x.detach().double(), la, ignore_index=ignore)
                + 0.7 * F.cross_entropy(x.detach().double(), lb, ignore_index=ignore))
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("reduction,weighted,avg", [("mean", False, None), ("sum", True, None),
                                                    ("none", True, None), ("mean", True, 4.0)])
def test_seesaw_module_public(mixed, reduction, weighted, avg):
    n, c = 9, 81
    mod = L.SeesawLoss(num_classes=c, reduction=reduction, loss_weight=1.5, backend="triton").to(DEV)
    mod.cum_samples += torch.randint(0, 30, (c + 1,), device=DEV).float()
    before = mod.cum_samples.clone()
    x = make_logits(n, c + 2, torch.float32, "rows").requires_grad_(True)
    labels = torch.randint(0, c + 1, (n,), device=DEV)
    labels[1] = c                                      # at least one background row
    labels_b = torch.randint(0, c + 1, (n,), device=DEV) if mixed else None
    lam = torch.rand(n, device=DEV) if mixed else None
    lw = torch.rand(n, device=DEV) if weighted else None
    out = mod(x, labels, label_weights=lw, avg_factor=avg, labels_b=labels_b, lam=lam)
    total = out["loss_cls_objectness"].sum() + out["loss_cls_classes"].sum()
    total.backward()

    counts = R.update_counts(before.clone(), labels)
    if mixed:
        counts = R.update_counts(counts, labels_b)
    torch.testing.assert_close(mod.cum_samples, counts)
    x64 = _f64_leaf(x)
    lw64 = None if lw is None else lw.double()
    if mixed:
        obj, cls = R.seesaw_module_loss_mixed(x64, labels, labels_b, lam.double(), counts.double(), c,
                                              label_weights=lw64, reduction=reduction, avg_factor=avg,
                                              loss_weight=1.5)
    else:
        obj, cls = R.seesaw_module_loss(x64, labels, counts.double(), c, label_weights=lw64, reduction=reduction,
                                        avg_factor=avg, loss_weight=1.5)
    (obj.sum() + cls.sum()).backward()
    torch.testing.assert_close(out["loss_cls_objectness"].double(), obj.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_cls_classes"].double(), cls.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)


def test_public_float16_logits():
    n, c = 7, 1203
    x = make_logits(n, c, torch.float16, "contig").requires_grad_(True)
    labels = torch.randint(0, c, (n,), device=DEV)
    counts = torch.randint(0, 50, (c,), device=DEV).float()
    out = L.seesaw_loss(x, labels, counts, reduction="sum", backend="triton")
    assert out.dtype == torch.float32
    out.backward()
    assert x.grad.dtype == torch.float16
    x64 = _f64_leaf(x)
    ref = R.seesaw_loss(x64, labels, counts.double(), reduction="sum")
    ref.backward()
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-3, atol=1e-5)


# --------------------------------------------------------------------------- seesaw_bwd, routing, errors
@pytest.mark.parametrize("ct,obj,dtype", [(81, False, torch.float32), (83, True, torch.float16),
                                          (1205, True, torch.float32), (3, False, torch.float16)])
def test_bwd_kernel(ct, obj, dtype):
    n = 37
    grad = (torch.randn(n, ct, device=DEV) * 2).to(dtype)
    gl = torch.randn(n, device=DEV)
    go = torch.randn(n, device=DEV) if obj else None
    got = _ops.seesaw_bwd(grad, gl, go, "triton")
    c = ct - 2 if obj else ct
    want = grad.double() * gl.double()[:, None]
    if obj:
        want[:, c:] = grad.double()[:, c:] * go.double()[:, None]
    assert got.dtype == dtype and got.shape == grad.shape
    rtol, atol = TOL[dtype]["grad"]
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol)
    torch.testing.assert_close(got, _ops.seesaw_bwd(grad, gl, go, "torch"), rtol=rtol, atol=atol)
    # a scalar upstream gradient arrives expanded (stride 0); ×0.25 in float32, one rounding
    s = torch.tensor(0.25, device=DEV).expand(n)
    got = _ops.seesaw_bwd(grad, s, s if obj else None, "triton")
    torch.testing.assert_close(got, (grad.float() * 0.25).to(dtype), rtol=0, atol=0)


def test_bwd_grid_holds_any_width():
    """The backward's programs lie on one grid axis (up to 2^31 - 1 of them): the second and third
    axes stop at 65535, i.e. 16.7M columns of 256-wide tiles. Its (row block, column block)
    decomposition is exercised above (1205 columns: 5 column blocks, 3 row blocks)."""
    from lossmix_ext.backends.triton import seesaw as TS
    for n, ct in [(1, 1), (37, 1205), (3, 2 ** 24 + 5), (2 ** 20, 1205), (1, 2 ** 30)]:
        launch = TS._bwd_launch(ct)
        (programs,) = TS._bwd_grid(n, ct, launch)
        assert programs == -(-n // launch.rows) * -(-ct // launch.block_c) < 2 ** 31


def test_float64_routes_to_torch_kernel():
    labels, w, ow, counts, ign = make_case(5, 6, 2, True, None)
    x = torch.randn(5, 8, dtype=torch.float64, device=DEV)
    got = _ops.seesaw_fwd(x, labels, w.double(), ow.double(), counts, 0.8, 2.0, 1e-2, ign, "triton")
    want = _ops.seesaw_fwd(x, labels, w.double(), ow.double(), counts, 0.8, 2.0, 1e-2, ign, "torch")
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_empty_batch_and_counts_none():
    x = torch.randn(0, 5, device=DEV)
    loss, obj, grad = _ops.seesaw_fwd(x, torch.zeros(1, 0, dtype=torch.long, device=DEV),
                                      torch.zeros(1, 0, device=DEV), None, None, 0.8, 2.0, 1e-2, None, "triton")
    assert loss.shape == (0,) and obj.shape == (0,) and grad.shape == (0, 5)
    # counts None with p > 0: equal counts, so mitigation vanishes (as in the torch kernel)
    labels, w, _, _, _ = make_case(7, 10, 1, False, None)
    check_fwd(torch.randn(7, 10, device=DEV), labels, w, None, None, 0.8, 2.0, None)


def test_out_of_range_labels_are_skipped_without_validation():
    n, c = 6, 9
    x = torch.randn(n, c, device=DEV)
    labels = torch.tensor([[0, -3, 9, 4, 100, 8]], device=DEV)
    w = torch.ones(1, n, device=DEV)
    with L.validation("off"):
        loss, _, grad = _ops.seesaw_fwd(x, labels, w, None, torch.ones(c, device=DEV), 0.8, 2.0, 1e-2, None,
                                        "triton")
    bad = torch.tensor([False, True, True, False, True, False], device=DEV)
    assert (loss[bad] == 0).all() and (grad[bad] == 0).all()
    good = seesaw_fwd_contract(x[~bad], labels[:, ~bad], w[:, ~bad], None, torch.ones(c, device=DEV), 0.8, 2.0,
                          1e-2, None)
    torch.testing.assert_close(loss[~bad].double(), good[0], rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_named():
    x = torch.randn(4, 6, device=DEV)
    with pytest.raises(ValueError, match="counts"):
        TS.seesaw_fwd(x, torch.zeros(1, 4, dtype=torch.long, device=DEV), torch.ones(1, 4, device=DEV), None,
                      torch.ones(5, device=DEV), 0.8, 2.0, 1e-2, None)
    with pytest.raises(ValueError, match="labels"):
        TS.seesaw_fwd(x, torch.zeros(3, 4, dtype=torch.long, device=DEV), torch.ones(3, 4, device=DEV), None,
                      None, 0.0, 0.0, 1.0, None)
    with pytest.raises(ValueError, match="weights"):
        TS.seesaw_fwd(x, torch.zeros(1, 4, dtype=torch.long, device=DEV), torch.ones(2, 4, device=DEV), None,
                      None, 0.0, 0.0, 1.0, None)
    with pytest.raises(ValueError, match="grad_obj"):
        TS.seesaw_bwd(x, torch.ones(4, device=DEV), torch.ones(3, device=DEV))


def test_launch_choice():
    """Register-resident up to C = 8192 (several rows per program for narrow rows), looped above."""
    small, lvis, widest = (TS.launch_config("seesaw_fwd", c) for c in (81, 1203, 8192))
    assert small.kernel == lvis.kernel == widest.kernel == "resident"
    assert small.block_c == 128 and small.rows >= 2
    assert lvis.block_c == 2048 and widest.block_c == 8192
    assert TS.launch_config("seesaw_fwd", 8193).kernel == "looped"
    names = [e[0] for e in TS.aot_configs()]
    assert len(names) == len(set(names)) and set(TS.aot_num_warps()) == set(names)
    for dtype in ("fp32", "fp16", "bf16"):
        for c in (81, 1205, 32768):
            launch = TS.launch_config("seesaw_fwd", c)
            tag = f"seesaw_fwd_{launch.kernel}_{dtype}_C{c}_"
            assert any(nm.startswith(tag) and f"_B{launch.block_c}x{launch.rows}_w{launch.num_warps}" in nm
                       for nm in names), tag


# --------------------------------------------------------------------------- AOT compile for sm_80 / sm_90
def _aot_compile(cc):
    return compile_module_configs("lossmix_ext.backends.triton.seesaw", cc)


def test_aot_compile_sm80_sm90():
    try:
        from triton.backends import backends
        if "nvidia" not in backends:
            pytest.skip("this triton has no NVIDIA backend")
    except ImportError:
        pytest.skip("triton.backends is not importable")
    with ThreadPoolExecutor(2) as pool:
        rows = [r for res in pool.map(_aot_compile, (80, 90)) for r in res]
    names = {e[0] for e in TS.aot_configs()}
    assert {(r["name"], r["cc"]) for r in rows} == {(nm, cc) for nm in names for cc in (80, 90)}
    print(f"\n{'config':66s} {'cc':>3s} {'warps':>5s} {'regs':>5s} {'stack':>6s} {'local':>6s} {'smem':>6s}")
    for r in sorted(rows, key=lambda r: (r["name"], r["cc"])):
        print(f"{r['name']:66s} {r['cc']:3d} {r['num_warps']:5d} {r.get('registers', -1):5d} "
              f"{r.get('stack_bytes', -1):6d} {r.get('local_bytes', -1):6d} {r.get('shared_bytes', -1):6d}")
    for r in rows:
        if "registers" in r:  # cuobjdump available: every configuration fits in registers, no spills
            assert r["registers"] <= 255, r
            # no local memory (spills); a call frame of at most 16 B (the fp32 division's slow path
            # in the looped kernels on sm_90, depending on the triton version) is accepted
            assert r.get("local_bytes", 0) == 0 and r.get("stack_bytes", 0) <= 16, r


# --------------------------------------------------------------------------- GPU parity (skipped without CUDA)
GPU_SHAPES = [  # n, c, sets, obj, mode
    (4096, 81, 2, False, "ce"),
    (8192, 1203, 1, True, "seesaw"),
    (2048, 1203, 2, False, "seesaw"),
    (1024, 8192, 1, False, "seesaw"),
    (64, 50000, 2, False, "seesaw"),
    (33, 40000, 1, True, "compensation"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,c,sets,obj,mode", GPU_SHAPES)
def test_gpu_fwd_parity(n, c, sets, obj, mode, dtype):
    labels, w, ow, counts, ign = make_case(n, c, sets, obj, -100, device="cuda")
    x = make_logits(n, c + 2 if obj else c, dtype, "rows", device="cuda")
    p, q = MODES[mode]
    got = _ops.seesaw_fwd(x, labels, w, ow, counts, p, q, 1e-2, ign, "triton")
    assert_outputs(got, seesaw_fwd_contract(x, labels, w, ow, counts, p, q, 1e-2, ign), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_public_api_and_backward(dtype):
    n, c = 4096, 1203
    mod = L.SeesawLoss(num_classes=c, reduction="sum", backend="triton").cuda()
    x = make_logits(n, c + 2, dtype, "contig", device="cuda").requires_grad_(True)
    labels = torch.randint(0, c + 1, (n,), device="cuda")
    labels_b = torch.randint(0, c + 1, (n,), device="cuda")
    lam = torch.rand(n, device="cuda")
    before = mod.cum_samples.clone()
    out = mod(x, labels, labels_b=labels_b, lam=lam)
    (out["loss_cls_objectness"] + out["loss_cls_classes"]).backward()
    counts = R.update_counts(R.update_counts(before.clone(), labels), labels_b)
    x64 = _f64_leaf(x)
    obj, cls = R.seesaw_module_loss_mixed(x64, labels, labels_b, lam.double(), counts.double(), c,
                                          reduction="sum")
    (obj + cls).backward()
    torch.testing.assert_close(out["loss_cls_objectness"].double(), obj.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss_cls_classes"].double(), cls.detach(), rtol=1e-5, atol=1e-5)
    rtol, atol = TOL[dtype]["grad"]
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=rtol, atol=atol)
    # plain mixed cross-entropy on extreme logits
    xe = torch.zeros(64, 81, device="cuda")
    xe[:6] = extreme_logits(6, 81, device="cuda")
    xe[6:] = torch.randn(58, 81, device="cuda") * 4
    xe = xe.to(dtype)
    labels2 = torch.randint(0, 81, (2, 64), device="cuda")
    labels2[1, ::7] = -100
    w2 = torch.rand(2, 64, device="cuda")
    got = _ops.seesaw_fwd(xe, labels2, w2, None, None, 0.0, 0.0, 1.0, -100, "triton")
    assert_outputs(got, seesaw_fwd_contract(xe, labels2, w2, None, None, 0.0, 0.0, 1.0, -100), dtype, loss_atol=1e-2)
