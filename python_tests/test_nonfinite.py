"""Non-finite logits: NaN and ±inf reach the loss and the gradient exactly as in the reference.

The contract (README, "Non-finite inputs"):

* a row whose class loss reads a NaN or +inf logit has a NaN loss and an all-NaN gradient
  row, as ``F.cross_entropy`` (``log_softmax``) gives; a −inf logit has probability 0 (a −inf
  label logit gives an infinite loss and a finite gradient); an all −inf row is NaN;
* a row without a class loss (background in ``SeesawLoss``, ``ignore_index``) does not read its
  class logits: loss 0 and gradient 0 whatever they hold, as mmdetection (which indexes the
  positive rows) computes.

Expected values come from ``F.cross_entropy`` / the mmdetection-style reference
(:mod:`lossmix_ext._reference`), never from the backends under test. Every CPU-usable backend
runs: ``cpu`` (both instruction-set builds), ``triton`` (interpreter), ``torch``.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import lossmix_ext as L
from lossmix_ext import _reference as R
from lossmix_ext.backends import cpu as cpu_backend

nan, inf = math.nan, math.inf
_C = cpu_backend._C
BACKENDS = [b for b in ("cpu", "triton", "torch") if b in L.available_backends("cpu", "seesaw_fwd")]
ISAS = _C.cpu_isas().split(",") if _C is not None else []
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _backend_dtype_ok(backend, dtype):
    return not (backend == "triton" and dtype == torch.bfloat16)  # no bf16 arithmetic in the interpreter


# (backend, instruction set of the cpu kernels): the cpu backend runs through each build
RUNS = [("cpu", i) for i in ISAS if "cpu" in BACKENDS] + [(b, None) for b in BACKENDS if b != "cpu"]


@pytest.fixture(params=RUNS, ids=[b if i is None else f"{b}-{i}" for b, i in RUNS])
def backend(request):
    name, isa = request.param
    if isa is not None:
        assert _C.set_cpu_isa(isa)
    yield name
    if isa is not None:
        _C.set_cpu_isa("auto")


def _run(fn, x):
    x = x.clone().requires_grad_()
    loss = fn(x)
    loss.sum().backward()
    return loss.detach(), x.grad


def _assert_same_nonfinite(got, want, rtol, atol):
    """Same NaN / ±inf positions, finite values close."""
    got, want = got.double(), want.double()
    assert torch.equal(got.isnan(), want.isnan()), f"NaN positions differ:\n{got}\n{want}"
    assert torch.equal(got.isinf(), want.isinf()), f"inf positions differ:\n{got}\n{want}"
    fin = torch.isfinite(want)
    torch.testing.assert_close(got[fin], want[fin], rtol=rtol, atol=atol)
    assert torch.equal(got[got.isinf()], want[want.isinf()])


TOL = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-10, 1e-12), torch.float16: (2e-2, 2e-3),
       torch.bfloat16: (5e-2, 1e-2)}


def test_issue_example_cpu_backend_propagates_nan(backend):
    """The reported case: one NaN logit gave a finite loss (88.0) and gradient on the cpu backend."""
    x = torch.randn(2, 4)
    x[0, 1] = nan
    loss, grad = _run(lambda z: L.mixed_cross_entropy(z, torch.tensor([0, 2]), torch.tensor([0, 2]), 0.5,
                                                      reduction="none", backend=backend), x)
    assert loss[0].isnan() and grad[0].isnan().all()
    assert torch.isfinite(loss[1]) and torch.isfinite(grad[1]).all()
    x[0, 1], x[0, 0] = 0.3, nan  # the NaN in the label's column: the gradient was finite
    loss, grad = _run(lambda z: L.mixed_cross_entropy(z, torch.tensor([0, 2]), torch.tensor([0, 2]), 0.5,
                                                      reduction="none", backend=backend), x)
    assert loss[0].isnan() and grad[0].isnan().all()


def _poisoned(n, c, val, col, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g) * 2
    x[0, col] = val
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("val", [nan, inf, -inf])
@pytest.mark.parametrize("col", [0, 3])  # 0: the label's column of row 0, 3: another column
def test_cross_entropy_matches_torch(backend, dtype, val, col):
    if not _backend_dtype_ok(backend, dtype):
        pytest.skip("no bf16 arithmetic under the Triton interpreter")
    x = _poisoned(4, 7, val, col, dtype)
    x[2] = -inf  # an all -inf row: NaN in F.cross_entropy
    la, lb = torch.tensor([0, 1, 2, 5]), torch.tensor([0, 6, 2, 4])
    got = _run(lambda z: L.mixed_cross_entropy(z, la, lb, 0.25, reduction="none", backend=backend), x)
    xo = x.double()
    want = _run(lambda z: 0.25 * F.cross_entropy(z, la, reduction="none")
                + 0.75 * F.cross_entropy(z, lb, reduction="none"), xo)
    for g, w in zip(got, want):
        _assert_same_nonfinite(g, w, *TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("val", [nan, inf, -inf])
@pytest.mark.parametrize("pq", [(0.8, 2.0), (0.8, 0.0), (0.0, 2.0), (0.0, 0.0)])
def test_seesaw_matches_reference(backend, dtype, val, pq):
    if not _backend_dtype_ok(backend, dtype):
        pytest.skip("no bf16 arithmetic under the Triton interpreter")
    p, q = pq
    counts = torch.tensor([5.0, 1.0, 30.0, 7.0, 2.0, 1.0, 90.0])
    labels = torch.tensor([0, 1, 2, 6])
    for col in (0, 4):
        x = _poisoned(4, 7, val, col, dtype, seed=col)
        got = _run(lambda z: L.seesaw_loss(z, labels, counts, p=p, q=q, reduction="none", backend=backend), x)
        want = _run(lambda z: R.seesaw_ce(z, labels, counts.double(), p, q), x.double())
        for g, w in zip(got, want):
            _assert_same_nonfinite(g, w, *TOL[dtype])


@pytest.mark.parametrize("val", [nan, inf, -inf])
def test_rows_without_class_loss_do_not_read_logits(backend, val):
    """Background rows of the module loss and ignored rows of the cross-entropy: 0, not NaN."""
    C = 5
    x = torch.randn(4, C + 2, dtype=torch.float64)
    x[1, :C] = val  # background row: poisoned class logits
    labels = torch.tensor([0, C, 3, C])
    cum = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0, 9.0], dtype=torch.float64)
    for red in ("none", "mean"):
        got = _run(lambda z: torch.stack([t.sum() for t in L.seesaw_module_loss(
            z, labels, cum, C, reduction=red, backend=backend)]), x)
        want = _run(lambda z: torch.stack([t.sum() for t in R.seesaw_module_loss(
            z, labels, cum, C, reduction=red)]), x)
        for g, w in zip(got, want):
            _assert_same_nonfinite(g, w, *TOL[torch.float64])
        assert torch.isfinite(got[1]).all() and (got[1][1, :C] == 0).all()
    xi = torch.randn(3, 4, dtype=torch.float64)
    xi[1] = val
    la, lb = torch.tensor([0, -100, 2]), torch.tensor([1, -100, 3])
    loss, grad = _run(lambda z: L.mixed_cross_entropy(z, la, lb, 0.5, reduction="none", backend=backend), xi)
    assert loss[1] == 0 and (grad[1] == 0).all() and torch.isfinite(grad).all()
    want = _run(lambda z: R.mixed_cross_entropy(z, la, lb, torch.full((3,), 0.5, dtype=torch.float64),
                                                reduction="none"), xi)
    _assert_same_nonfinite(loss, want[0], *TOL[torch.float64])
    _assert_same_nonfinite(grad, want[1], *TOL[torch.float64])


def test_nan_objectness_and_weighted_rows(backend):
    """NaN objectness logits make that row's objectness NaN; a NaN class row with weight 0 is
    still NaN (0 · NaN), as in the reference."""
    C = 4
    x = torch.randn(3, C + 2, dtype=torch.float64)
    x[0, C] = nan
    x[2, 1] = nan
    labels = torch.tensor([1, 2, 0])
    lw = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    cum = torch.ones(C + 1, dtype=torch.float64) * 4
    got = _run(lambda z: torch.cat(L.seesaw_module_loss(z, labels, cum, C, label_weights=lw, reduction="none",
                                                        backend=backend)), x)
    want = _run(lambda z: torch.cat(R.seesaw_module_loss(z, labels, cum, C, label_weights=lw, reduction="none")), x)
    for g, w in zip(got, want):
        _assert_same_nonfinite(g, w, *TOL[torch.float64])
    assert got[0][0].isnan() and got[1][0, C:].isnan().all() and torch.isfinite(got[1][0, :C]).all()
    assert got[0][3 + 2].isnan() and got[1][2, :C].isnan().all()  # row 2: weight 0 times a NaN row
