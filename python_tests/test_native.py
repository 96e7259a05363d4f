"""The native extension ``lossmix_ext._C``: the ``cpu`` backend's kernels (csrc/cpu), and the
``cuda`` backend's kernels on a GPU (tests marked ``gpu``).

Golden values: a float64 transcription of the op contract written here in the log domain
(no C×C matrix, so it also covers C >= 32768; itself checked against the ``torch`` backend),
``lossmix_ext._reference`` (public API values, autograd gradients, image mixing) and fp64
gradcheck. Every Seesaw case runs through both builds of the CPU kernels (AVX2 and baseline)
where the machine has both.

Tolerances: float32 outputs rtol 1e-5 (gradients atol 1e-6, losses atol 1e-5) against the
float64 golden values of the same inputs; float16 / bfloat16 gradients are computed in
float32 and rounded once, so they are compared with the golden values rounded to that
dtype: rtol 2e-3 / 1.6e-2 (two ulps), atol 1e-4 / 1e-3.

Without the extension (LOSSMIX_EXT_NO_NATIVE=1, no compiler) these tests skip, except
test_extension_built, which fails in CI (env CI set): there the CPU extension is required.
"""
import os
import subprocess
import sys

import pytest
import torch

import lossmix_ext as L
from lossmix_ext import _backend, _ops, _reference as R
from lossmix_ext.backends import torch as torch_backend
from oracle import seesaw_fwd_contract

try:
    from lossmix_ext import _C
    _IMPORT_ERROR = None
except ImportError as exc:  # not built
    _C = None
    _IMPORT_ERROR = str(exc)

IN_CI = bool(os.environ.get("CI"))
HAS_CUDA = torch.cuda.is_available()


_NOT_BUILT = f"lossmix_ext._C was not built ({_IMPORT_ERROR}); pip install --no-build-isolation -e ."


def test_extension_built():
    """The one test that fails in CI when the CPU extension is missing (the others skip)."""
    if _C is None:
        if IN_CI:
            pytest.fail(f"CI requires the CPU extension, but {_NOT_BUILT}")
        pytest.skip(_NOT_BUILT)
    assert _C.cpu_isa() in ("avx2", "baseline")


@pytest.fixture(autouse=True)
def _native(request):
    if _C is None and request.node.name != "test_extension_built" and "without_extension" not in request.node.name:
        pytest.skip(_NOT_BUILT)


ISAS = (_C.cpu_isas().split(",") if _C is not None else ["baseline"])


@pytest.fixture(params=ISAS)
def isa(request):
    assert _C.set_cpu_isa(request.param)
    assert _C.cpu_isa() == request.param
    yield request.param
    _C.set_cpu_isa("auto")


# q in {1, 2} takes the kernels' exp-free route for the modified logits, other q the general one
MODES = {"seesaw": (0.8, 2.0), "ce": (0.0, 0.0), "mitigation": (0.8, 0.0), "compensation": (0.0, 2.0),
         "general": (1.3, 1.5), "q1": (0.5, 1.0)}
GRAD_TOL = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-10, 1e-12), torch.float16: (2e-3, 1e-4),
            torch.bfloat16: (1.6e-2, 1e-3)}


# --------------------------------------------------------------------------- golden values
oracle = seesaw_fwd_contract

def make_case(n, c, sets, obj, ignore, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    ct = c + 2 if obj else c
    x = torch.randn(n, ct, generator=g) * scale
    labels = torch.randint(0, c + 1 if obj else c, (sets, n), generator=g)
    if ignore is not None and n > 1:
        labels[0, 1] = ignore
    w = torch.rand(sets, n, generator=g) + 0.1
    if obj:
        w = w * (labels < c)  # background rows carry no class loss (as the public API weights them)
    ow = torch.rand(sets, n, generator=g) + 0.1 if obj else None
    counts = torch.randint(0, 400, (c,), generator=g).float()
    return x, labels, w, ow, counts


def make_logits(x, layout):
    """Same values as x in another layout: rows of a wider tensor, column stride 2, or a transpose."""
    n, ct = x.shape
    if layout == "rows":
        return torch.cat([x, torch.full((n, 3), 7.0, dtype=x.dtype, device=x.device)], 1)[:, :ct]
    if layout == "cols":
        return torch.stack([x, torch.full_like(x, 7.0)], 2).reshape(n, 2 * ct)[:, ::2]
    if layout == "transposed":
        return x.t().contiguous().t()
    return x


def check_fwd(got, want, dtype):
    loss, obj, grad = got
    wl, wo, wg = want
    assert grad.dtype == dtype and grad.is_contiguous() and loss.dtype == _ops.opmath_dtype(dtype)
    lt = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss.double(), wl, **lt)
    torch.testing.assert_close(obj.double(), wo, **lt)
    rtol, atol = GRAD_TOL[dtype]
    torch.testing.assert_close(grad.double(), wg.to(dtype).double(), rtol=rtol, atol=atol)


def run(x, labels, w, ow, counts, p, q, ign, eps=1e-2, backend="cpu"):
    return _ops.seesaw_fwd(x, labels, w, ow, counts, p, q, eps, ign, backend)


# --------------------------------------------------------------------------- seesaw_fwd
def test_oracle_matches_torch_backend():
    for mode, (p, q) in MODES.items():
        x, labels, w, ow, counts = make_case(9, 13, 2, True, -100, seed=3)
        d = (lambda t: None if t is None else t.double())
        want = torch_backend.seesaw_fwd(x.double(), labels, d(w), d(ow), d(counts), p, q, 1e-2, -100)
        for a, b in zip(oracle(x, labels, w, ow, counts, p, q, 1e-2, -100), want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c", [2, 3, 81, 1203, 1205, 4097])
@pytest.mark.parametrize("mode", list(MODES))
def test_fwd_matrix(isa, c, mode):
    """N in {1, 7, 64} x 1 or 2 label sets x objectness x ignore_index, float32, contiguous."""
    p, q = MODES[mode]
    for n in (1, 7, 64):
        for sets, obj, ign in ((1, False, None), (2, False, -100), (1, True, None), (2, True, 5)):
            x, labels, w, ow, counts = make_case(n, c, sets, obj, ign, seed=n + c)
            check_fwd(run(x, labels, w, ow, counts, p, q, ign), oracle(x, labels, w, ow, counts, p, q, 1e-2, ign),
                      torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["contig", "rows", "cols", "transposed"])
def test_fwd_dtypes_and_layouts(isa, dtype, layout):
    for c, n in ((81, 7), (1205, 3)):
        for mode in ("seesaw", "ce"):
            p, q = MODES[mode]
            x, labels, w, ow, counts = make_case(n, c, 2, True, None, seed=c)
            x = make_logits(x.to(dtype), layout)
            if dtype == torch.float64:
                w, ow = w.double(), ow.double()
            check_fwd(run(x, labels, w, ow, counts, p, q, None), oracle(x, labels, w, ow, counts, p, q, 1e-2, None),
                      dtype)


@pytest.mark.parametrize("mode", ["seesaw", "ce"])
def test_fwd_wide_rows(isa, mode):
    """C >= 32768: rows span many chunks whose softmax states are merged."""
    p, q = MODES[mode]
    x, labels, w, ow, counts = make_case(3, 40000, 2, True, None, seed=1)
    x[1, 1234] = 40.0  # one dominant class in a middle chunk
    check_fwd(run(x, labels, w, ow, counts, p, q, None), oracle(x, labels, w, ow, counts, p, q, 1e-2, None),
              torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("c", [3, 1205])
def test_ties_and_extreme_logits(isa, dtype, c):
    n = 6
    g = torch.Generator().manual_seed(c)
    x = torch.zeros(n, c + 2)
    x[0] = 1.5                                            # all tied
    x[1, ::2] = 2.0                                       # tied maxima
    x[2] = (torch.randint(-1, 2, (c + 2,), generator=g) * 1e4)  # ±1e4 and 0
    x[3] = -1e4
    x[3, 1] = 1e4                                         # one huge class
    x[4] = 1e4                                            # all huge
    x[5] = torch.linspace(-1e4, 1e4, c + 2)
    x = x.to(dtype)
    labels = torch.tensor([[0, 1, 2 % c, 0, c, c - 1], [c - 1, 0, 1 % c, 1, 0, 0]])
    w = (torch.rand(2, n, generator=g) + 0.1) * (labels < c)
    ow = torch.rand(2, n, generator=g) + 0.1
    counts = torch.randint(0, 9, (c,), generator=g).float()
    for mode, (p, q) in MODES.items():
        got = run(x, labels, w, ow, counts, p, q, None)
        assert all(torch.isfinite(t).all() for t in got)
        check_fwd(got, oracle(x, labels, w, ow, counts, p, q, 1e-2, None), dtype)


def test_fwd_edge_cases(isa):
    # empty batch
    loss, obj, grad = run(torch.zeros(0, 5), torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0), None, None,
                          0.8, 2.0, None)
    assert loss.shape == (0,) and obj.shape == (0,) and grad.shape == (0, 5)
    # counts None with p > 0: no mitigation
    x, labels, w, _, counts = make_case(4, 10, 1, False, None)
    check_fwd(run(x, labels, w, None, None, 0.8, 2.0, None), oracle(x, labels, w, None, None, 0.8, 2.0, 1e-2, None),
              torch.float32)
    # every row ignored: zero loss and zero class gradient
    labels = torch.full((2, 4), -100)
    loss, _, grad = run(x, labels, torch.ones(2, 4), None, counts, 0.8, 2.0, -100)
    assert torch.equal(loss, torch.zeros(4)) and torch.equal(grad, torch.zeros(4, 10))
    # more than 2 label sets go to the torch kernel
    labels3, w3 = torch.randint(0, 10, (3, 4)), torch.rand(3, 4)
    got = run(x, labels3, w3, None, counts, 0.8, 2.0, None)
    want = torch_backend.seesaw_fwd(x, labels3, w3, None, counts, 0.8, 2.0, 1e-2, None)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("q", [2.0, 1.5])
def test_fwd_huge_count_range(isa, q):
    """Counts spanning 1 .. 1e20 (mitigation factors down to 1e-16): the general route."""
    x, labels, w, ow, counts = make_case(7, 300, 2, True, None, seed=4)
    counts[::3] = 1e20
    counts[1::7] = 0
    check_fwd(run(x, labels, w, ow, counts, 0.8, q, None), oracle(x, labels, w, ow, counts, 0.8, q, 1e-2, None),
              torch.float32)
    check_fwd(run(x, labels, w, ow, counts, 0.8, q, None, eps=1e-30),
              oracle(x, labels, w, ow, counts, 0.8, q, 1e-30, None), torch.float32)


def test_out_of_range_labels_skipped_without_validation(isa):
    x, labels, w, ow, counts = make_case(5, 7, 2, True, None)
    labels[0, 0], labels[1, 3] = 100, -3
    with L.validation("off"):
        loss, obj, grad = run(x, labels, w, ow, counts, 0.8, 2.0, None)
    want = oracle(x, labels, w, ow, counts, 0.8, 2.0, 1e-2, None)
    check_fwd((loss, obj, grad), want, torch.float32)


def test_thread_count_does_not_change_results():
    x, labels, w, ow, counts = make_case(257, 1205, 2, True, None, seed=5)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(x, labels, w, ow, counts, 0.8, 2.0, None)
        torch.set_num_threads(max(2, prev))
        many = run(x, labels, w, ow, counts, 0.8, 2.0, None)
    finally:
        torch.set_num_threads(prev)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


def test_avx2_and_baseline_agree():
    if "avx2" not in ISAS:
        pytest.skip("the AVX2 kernels are not usable on this CPU")
    x, labels, w, ow, counts = make_case(33, 4097, 2, True, None, seed=2)
    res = {}
    for name in ("avx2", "baseline"):
        assert _C.set_cpu_isa(name)
        res[name] = run(x, labels, w, ow, counts, 0.8, 2.0, None)
    _C.set_cpu_isa("auto")
    for a, b in zip(res["avx2"], res["baseline"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_isa_selection():
    assert _C.cpu_isa() in ("avx2", "baseline")
    assert not _C.set_cpu_isa("no-such-isa")
    assert _C.set_cpu_isa("baseline") and _C.cpu_isa() == "baseline"
    assert _C.set_cpu_isa("auto")
    assert _C.cpu_isa() == ("avx2" if "avx2" in ISAS else "baseline")


# --------------------------------------------------------------------------- in place and backward
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["contig", "cols"])
def test_fwd_inplace(dtype, layout):
    x, labels, w, ow, counts = make_case(7, 81, 2, True, None)
    x = make_logits(x.to(dtype), layout)
    want = run(x, labels, w, ow, counts, 0.8, 2.0, None)
    buf = x.clone() if layout == "contig" else make_logits(x.contiguous(), layout)
    loss, obj, grad = _backend.kernel("seesaw_fwd_inplace", "cpu")(buf, labels, w, ow, counts, 0.8, 2.0, 1e-2, None)
    assert grad is buf
    assert torch.equal(loss, want[0]) and torch.equal(obj, want[1]) and torch.equal(buf, want[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_public_inplace_grad(dtype):
    """inplace_grad=True through the public API: the cpu backend's in-place kernel, same gradient."""
    x, labels, _, _, counts = make_case(64, 1205, 2, False, None, seed=9)
    lam = torch.rand(64)
    grads = []
    for inplace in (True, False):
        leaf = _leaf(x.to(dtype))
        h = leaf * 2.0  # not a leaf; mul by a number saves nothing for its backward
        loss = L.seesaw_loss_mixed(h, labels[0], labels[1], lam, counts, inplace_grad=inplace, backend="cpu")
        loss.backward()
        grads.append((loss.detach(), leaf.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("obj", [False, True])
def test_bwd_scaling(dtype, obj):
    n, ct = 9, 37
    g = torch.randn(n, ct).to(dtype)
    om = _ops.opmath_dtype(dtype)
    gl = torch.randn(n, dtype=om)
    go = torch.randn(n, dtype=om) if obj else None
    want = torch_backend.seesaw_bwd(g, gl, go)
    got = _ops.seesaw_bwd(g, gl, go, "cpu")
    assert got.dtype == dtype
    assert torch.equal(got, want)
    # broadcast upstream gradient (stride 0), as from loss.sum().backward()
    one = torch.ones((), dtype=om).expand(n)
    assert torch.equal(_ops.seesaw_bwd(g, one, go, "cpu"), torch_backend.seesaw_bwd(g, one, go))


def test_saved_bytes_at_most_the_logits():
    x, labels, w, ow, counts = make_case(64, 1205, 1, False, None)
    x.requires_grad_()
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = L.seesaw_loss(x, labels[0], counts, backend="cpu")
    assert sum(saved) <= x.numel() * x.element_size()
    loss.backward()


# --------------------------------------------------------------------------- public API vs _reference
def _leaf(x):
    return x.detach().clone().requires_grad_()


def _compare(got, want, x_got, x_want, rtol=1e-5, atol=1e-5):
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol)
    cot = torch.randn_like(want)
    (got * cot.to(got.dtype)).sum().backward()
    (want * cot).sum().backward()
    torch.testing.assert_close(x_got.grad.double(), x_want.grad.double(), rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("reduction,avg", [("none", False), ("none", True), ("mean", False), ("mean", True),
                                           ("sum", False)])
@pytest.mark.parametrize("weighted", [False, True])
def test_seesaw_loss_public(reduction, weighted, avg):
    x, labels, _, _, counts = make_case(64, 81, 1, False, None, seed=11)
    lw = torch.rand(64) if weighted else None
    kw = dict(label_weights=lw, reduction=reduction, avg_factor=17.0 if avg else None)
    xg, xr = _leaf(x), _leaf(x.double())
    got = L.seesaw_loss(xg, labels[0], counts, backend="cpu", **kw)
    want = R.seesaw_loss(xr, labels[0], counts.double(), **kw)
    _compare(got, want, xg, xr)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_seesaw_loss_mixed_public(reduction):
    x, labels, _, _, counts = make_case(7, 1203, 2, False, None, seed=12)
    lam = torch.rand(7)
    xg, xr = _leaf(x), _leaf(x.double())
    got = L.seesaw_loss_mixed(xg, labels[0], labels[1], lam, counts, reduction=reduction, backend="cpu")
    want = R.seesaw_loss_mixed(xr, labels[0], labels[1], lam.double(), counts.double(), reduction=reduction)
    _compare(got, want, xg, xr)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_mixed_cross_entropy_public(reduction):
    x, labels, _, _, _ = make_case(64, 1205, 2, False, -100, seed=13)
    labels[1, 5] = -100
    lam = torch.rand(64)
    xg, xr = _leaf(x), _leaf(x.double())
    got = L.mixed_cross_entropy(xg, labels[0], labels[1], lam, reduction=reduction, backend="cpu")
    want = R.mixed_cross_entropy(xr, labels[0], labels[1], lam.double(), reduction=reduction)
    _compare(got, want, xg, xr)


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_seesaw_module_public(mixed, reduction):
    C = 80
    x, labels, _, _, _ = make_case(64, C, 2, True, None, seed=14)
    lam = torch.rand(64)
    lw = torch.rand(64)
    mod = L.SeesawLoss(num_classes=C, reduction=reduction, backend="cpu")
    xg, xr = _leaf(x), _leaf(x.double())
    if mixed:
        out = mod(xg, labels[0], label_weights=lw, labels_b=labels[1], lam=lam)
        cum = torch.zeros(C + 1)
        R.update_counts(cum, torch.cat([labels[0], labels[1]]))
        want = R.seesaw_module_loss_mixed(xr, labels[0], labels[1], lam.double(), cum.double(), C, label_weights=lw,
                                          reduction=reduction)
    else:
        out = mod(xg, labels[0], label_weights=lw)
        cum = R.update_counts(torch.zeros(C + 1), labels[0])
        want = R.seesaw_module_loss(xr, labels[0], cum.double(), C, label_weights=lw, reduction=reduction)
    torch.testing.assert_close(mod.cum_samples, cum)
    got = (out["loss_cls_objectness"], out["loss_cls_classes"])
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-5)
    (got[0].sum() + got[1].sum()).backward()
    (want[0].sum() + want[1].sum()).backward()
    torch.testing.assert_close(xg.grad.double(), xr.grad, rtol=1e-5, atol=1e-6)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 5), generator=g)
    counts = torch.randint(0, 50, (7,), generator=g).double()
    lam = torch.rand(5, generator=g, dtype=torch.float64)
    lw = torch.rand(5, generator=g, dtype=torch.float64)
    checks = [
        lambda z: L.seesaw_loss(z, labels[0], counts, q=0.0, label_weights=lw, reduction="none", backend="cpu"),
        lambda z: L.seesaw_loss_mixed(z, labels[0], labels[1], lam, counts, q=0.0, backend="cpu"),
        lambda z: L.mixed_cross_entropy(z, labels[0], labels[1], lam, reduction="sum", backend="cpu"),
    ]
    for f in checks:
        assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(),))
    # compensation on but inactive (every label is its row's clear argmax): σ detached is moot
    xa = x.clone()
    xa[torch.arange(5), labels[0]] += 20
    assert torch.autograd.gradcheck(lambda z: L.seesaw_loss(z, labels[0], counts, q=2.0, reduction="sum",
                                                            backend="cpu"), (xa.requires_grad_(),))
    # full module: objectness columns
    xo = torch.randn(5, 9, generator=g, dtype=torch.float64)
    lab = torch.tensor([0, 7, 3, 7, 6])
    cum = torch.randint(1, 9, (8,), generator=g).double()
    assert torch.autograd.gradcheck(
        lambda z: sum(L.seesaw_module_loss(z, lab, cum, 7, q=0.0, backend="cpu")), (xo.requires_grad_(),))


def test_compile_fullgraph():
    x, labels, _, _, counts = make_case(16, 81, 2, False, None, seed=21)
    lam = torch.rand(16)

    def f(z, img, idx):
        loss = L.seesaw_loss_mixed(z, labels[0], labels[1], lam, counts, backend="cpu")
        mixed = L.mix_images(img, lam, idx, backend="cpu")
        return loss + mixed.mean()

    img = torch.randn(16, 3, 4, 4, requires_grad=True)
    idx = torch.randperm(16)
    cf = torch.compile(f, fullgraph=True)
    z1, z2 = _leaf(x), _leaf(x)
    i1, i2 = _leaf(img), _leaf(img)
    got, want = cf(z1, i1, idx), f(z2, i2, idx)
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    torch.testing.assert_close(z1.grad, z2.grad)
    torch.testing.assert_close(i1.grad, i2.grad)


# --------------------------------------------------------------------------- image mixing
def _images(dtype, shape=(6, 3, 5, 7), channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randint(0, 256, shape, generator=g, dtype=torch.uint8) if dtype == torch.uint8
         else torch.randn(shape, generator=g).to(dtype))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


INDEXES = {"perm": [3, 0, 5, 1, 2, 4], "repeats": [1, 1, 4, 0, 1, 1], "identity": [0, 1, 2, 3, 4, 5]}
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.5]


def _mean_std(om):
    """mean / std as the public API passes them: float32 values, in opmath."""
    return torch.tensor(MEAN).to(om), torch.tensor(STD).to(om)


def _lam(n, dtype=torch.float32):
    lam = torch.rand(n, dtype=dtype)
    lam[0], lam[1] = 1.0, 0.0
    return lam


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("index", list(INDEXES))
def test_mix_images(dtype, channels_last, norm, index):
    x = _images(dtype, channels_last=channels_last)
    om = _ops.opmath_dtype(dtype)
    lam, idx = _lam(6, om), torch.tensor(INDEXES[index])
    kw = dict(mean=MEAN, std=STD) if norm else {}
    got = L.mix_images(x, lam, idx, backend="cpu", **kw)
    scale = 1 / 255 if dtype == torch.uint8 else 1.0
    mt = _mean_std(om) if norm else (None, None)
    want = R.mix_images(x, lam, idx, None, mt[0], mt[1], scale)
    assert got.dtype == want.dtype and got.stride() == x.stride()
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("shape", [(5, 1, 1, 1), (5, 11, 1, 1), (5, 2, 3, 4, 3), (3, 1, 1, 40000)])
def test_mix_images_any_rank(shape):
    x = _images(torch.float32, shape=shape)
    lam, idx = _lam(shape[0]), torch.randint(0, shape[0], (shape[0],))
    torch.testing.assert_close(L.mix_images(x, lam, idx, backend="cpu"), R.mix_images(x, lam, idx), rtol=1e-6,
                               atol=1e-7)


def test_mix_images_large_uint8_normalised_one_pass():
    # several parallel chunks per sample, channels_last chunks aligned to the channel count
    x = _images(torch.uint8, shape=(3, 3, 130, 97), channels_last=True)
    lam, idx = _lam(3), torch.tensor([2, 0, 1])
    got = L.mix_images(x, lam, idx, mean=MEAN, std=STD, backend="cpu")
    want = R.mix_images(x, lam, idx, None, torch.tensor(MEAN), torch.tensor(STD), 1 / 255)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_mix_images_delegated_combinations():
    """Combinations the native kernel leaves to the torch kernel (samples that are not contiguous
    blocks) and ones it took over (CutMix boxes, float16 images, other output dtypes): the
    reference's results."""
    x = _images(torch.float32)
    lam, idx = _lam(6), torch.tensor(INDEXES["repeats"])
    boxes = torch.tensor([[0, 0, 5, 7], [1, 2, 3, 4], [0, 0, 0, 0], [4, 6, 5, 7], [2, 2, 2, 5], [0, 1, 5, 3]])
    torch.testing.assert_close(L.mix_images(x, lam, idx, boxes=boxes, backend="cpu"),
                               R.mix_images(x, lam, idx, boxes))
    xh = x.half()
    torch.testing.assert_close(L.mix_images(xh, lam, idx, backend="cpu"), R.mix_images(xh, lam, idx))
    xu = _images(torch.uint8)
    torch.testing.assert_close(L.mix_images(xu, lam, idx, out_dtype=torch.float16, backend="cpu"),
                               R.mix_images(xu, lam, idx, scale=1 / 255, out_dtype=torch.float16))
    xs = _images(torch.float32, shape=(6, 3, 5, 14))[..., ::2]  # samples are not contiguous blocks
    torch.testing.assert_close(L.mix_images(xs, lam, idx, backend="cpu"), R.mix_images(xs, lam, idx))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("index", ["perm", "repeats"])
def test_mix_images_backward(dtype, channels_last, norm, index):
    x = _images(dtype, channels_last=channels_last, seed=1)
    lam, idx = _lam(6, dtype), torch.tensor(INDEXES[index])
    kw = dict(mean=MEAN, std=STD) if norm else {}
    xg, xr = _leaf(x), _leaf(x)
    out = L.mix_images(xg, lam, idx, backend="cpu", **kw)
    mt = _mean_std(dtype) if norm else (None, None)
    ref = R.mix_images(xr, lam, idx, None, mt[0], mt[1])
    cot = torch.randn_like(ref)
    (out * cot).sum().backward()
    (ref * cot).sum().backward()
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xg.grad, xr.grad, **tol)
    # a broadcast (stride-0) upstream gradient
    xg.grad = None
    L.mix_images(xg, lam, idx, backend="cpu", **kw).sum().backward()
    xr.grad = None
    R.mix_images(xr, lam, idx, None, mt[0], mt[1]).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pairing", ["pairs", "flip"])
@pytest.mark.parametrize("batch", [6, 7])
def test_mix_images_inplace_pairs(dtype, pairing, batch):
    x = _images(dtype, shape=(batch, 3, 9, 5), seed=2)
    lam, idx = L.sample_mix(batch, pairing=pairing, generator=torch.Generator().manual_seed(batch))
    lam = lam.to(dtype)
    want = R.mix_images(x, lam, idx)
    y = x.clone()
    assert L.mix_images_(y, lam, idx, backend="cpu") is y
    torch.testing.assert_close(y, want, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-7)
    fixed = (idx == torch.arange(batch)).nonzero().flatten()
    assert torch.equal(y[fixed], x[fixed])  # fixed points stay exactly as they were


def test_mix_images_inplace_channels_last_and_fallback():
    x = _images(torch.float32, shape=(4, 3, 6, 5), channels_last=True)
    lam, idx = torch.rand(4), torch.tensor([1, 0, 3, 2])
    y = x.clone()
    L.mix_images_(y, lam, idx, backend="cpu")
    torch.testing.assert_close(y, R.mix_images(x, lam, idx), rtol=1e-6, atol=1e-7)
    xh = x.half().contiguous()  # float16: natively too
    yh = xh.clone()
    L.mix_images_(yh, lam, idx, backend="cpu")
    torch.testing.assert_close(yh, R.mix_images(xh, lam, idx))


HALF = (torch.float16, torch.bfloat16)
HALF_RTOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}  # one rounding of the float32 maths


@pytest.mark.parametrize("kind", HALF)
def test_half_conversions_round_as_pytorch(isa, kind):
    """float16 / bfloat16 <-> float32 in the kernels (F16C, bfloat16 shifts, or the integer lane
    arithmetic of the baseline build), bit for bit as PyTorch converts: every 16-bit pattern
    (NaN payloads aside: NaN stays NaN), scaled by inexact factors so that the conversion back
    rounds (to nearest even, overflow to infinity), through the native row scaling."""
    bits = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(kind).reshape(256, 256)
    for s in (1.0, 0.37, 3.3, 1.0009765625, 255.9):
        factors = torch.full((256,), s)
        got = _C.seesaw_bwd_cpu(bits, factors, None)
        want = (bits.float() * s).to(kind)
        same = (got.view(torch.int16) == want.view(torch.int16)) | (got.isnan() & want.isnan())
        assert bool(same.all()), (s, bits[~same][:4], got[~same][:4], want[~same][:4])


@pytest.mark.parametrize("in_dtype,out_dtype", [(torch.uint8, torch.bfloat16), (torch.uint8, torch.float16),
                                                (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                                (torch.float32, torch.bfloat16), (torch.float16, torch.float32)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_mix_images_half_precision(isa, in_dtype, out_dtype, channels_last):
    """float16 / bfloat16 images and outputs in the native kernels (float32 maths, converted block by
    block), with and without normalisation and CutMix boxes: the reference's float32 maths
    rounded once to the output dtype (one rounding apart at most: fused multiply-adds)."""
    x = _images(in_dtype, shape=(6, 3, 9, 37), channels_last=channels_last, seed=3)  # rows through the tails
    lam, idx = _lam(6), torch.tensor(INDEXES["repeats"])
    boxes = torch.tensor([[0, 0, 5, 7], [1, 2, 3, 4], [0, 0, 0, 0], [4, 6, 9, 37], [2, 2, 2, 5], [0, 1, 9, 30]])
    scale = 1 / 255 if in_dtype == torch.uint8 else 1.0
    for kw in ({}, dict(mean=MEAN, std=STD), dict(boxes=boxes), dict(boxes=boxes, mean=MEAN, std=STD)):
        got = L.mix_images(x, lam, idx, out_dtype=out_dtype, backend="cpu", **kw)
        m, sd = _mean_std(torch.float32) if "mean" in kw else (None, None)
        want = R.mix_images(x.float() if in_dtype != torch.uint8 else x, lam, idx, kw.get("boxes"), m, sd, scale)
        assert got.dtype == out_dtype and got.is_contiguous(memory_format=torch.channels_last) == channels_last
        torch.testing.assert_close(got.float(), want.to(out_dtype).float(), rtol=HALF_RTOL[out_dtype], atol=1e-5,
                                   msg=lambda msg: f"{kw}: {msg}")


@pytest.mark.parametrize("dtype", HALF)
def test_mix_images_half_backward_and_in_place(isa, dtype):
    x = _images(dtype, shape=(6, 3, 9, 37), seed=4)
    lam, idx = _lam(6), torch.tensor(INDEXES["repeats"])
    xg = _leaf(x)
    out = L.mix_images(xg, lam, idx, std=STD, backend="cpu")
    cot = torch.randn_like(out)
    (out * cot).sum().backward()
    xr = _leaf(x.float())
    (R.mix_images(xr, lam, idx, None, None, _mean_std(torch.float32)[1]) * cot.float()).sum().backward()
    assert xg.grad.dtype == dtype
    torch.testing.assert_close(xg.grad.float(), xr.grad.to(dtype).float(), rtol=HALF_RTOL[dtype], atol=1e-5)
    pairs = torch.tensor([5, 2, 1, 3, 4, 0])
    boxes = torch.tensor([[0, 0, 5, 7], [1, 2, 3, 4], [0, 0, 0, 0], [4, 6, 9, 37], [2, 2, 2, 5], [0, 1, 9, 30]])
    for kw in ({}, dict(boxes=boxes)):
        y = x.clone()
        L.mix_images_(y, lam, pairs, backend="cpu", **kw)
        want = R.mix_images(x.float(), lam, pairs, kw.get("boxes")).to(dtype)
        torch.testing.assert_close(y.float(), want.float(), rtol=HALF_RTOL[dtype], atol=1e-5)
        assert torch.equal(y[3], x[3]) and torch.equal(y[4], x[4])  # fixed points untouched


@pytest.mark.parametrize("dtype", HALF)
def test_mix_images_in_place_half_every_pattern(isa, dtype):
    """The in-place pair step on every 16-bit pattern (NaN payloads, infinities, subnormals; the
    bfloat16 path loads and stores two vectors at a time, permuted within 128-bit halves under AVX2):
    each output the float32 mix of its own two inputs rounded once to the dtype (a fused multiply-add
    may move it one unit in the last place), NaN exactly where the float32 mix is NaN."""
    bits = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype)
    x = torch.stack([bits, bits.roll(12345)]).reshape(2, 1, 256, 256)
    lam = torch.tensor([0.3, 0.8])
    y = x.clone()
    L.mix_images_(y, lam, torch.tensor([1, 0]), backend="cpu")
    xf = x.float()
    want = torch.stack([lam[0] * xf[0] + (1 - lam[0]) * xf[1], lam[1] * xf[1] + (1 - lam[1]) * xf[0]]).to(dtype)
    assert torch.equal(y.isnan(), want.isnan())
    fin = torch.isfinite(want) & torch.isfinite(y)
    assert torch.equal(y[~fin & ~want.isnan()], want[~fin & ~want.isnan()])  # the same infinities
    ulp = torch.finfo(dtype).eps * want[fin].float().abs().clamp_min(torch.finfo(dtype).tiny)
    assert bool(((y[fin].float() - want[fin].float()).abs() <= ulp).all())
    assert (y[fin] == want[fin]).float().mean() > 0.99


def test_mix_out_of_range_index_without_validation():
    x = _images(torch.float32)
    lam, idx = _lam(6), torch.tensor([0, 9, 2, -4, 4, 5])
    with L.validation("off"):
        out = L.mix_images(x, lam, idx, backend="cpu")
        y = x.clone()
        L.mix_images_(y, lam, torch.tensor([1, 0, 17, 3, 4, 5]), backend="cpu")
    assert torch.isfinite(out).all() and torch.isfinite(y).all()


def test_kernel_argument_errors_name_the_argument():
    with pytest.raises(RuntimeError, match="logits must be 2-D"):
        _C.seesaw_fwd_cpu(torch.zeros(2, 3, 4), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2), None, None,
                          0.8, 2.0, 1e-2, None)
    with pytest.raises(RuntimeError, match="labels must have shape"):
        _C.seesaw_fwd_cpu(torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 2), None, None,
                          0.8, 2.0, 1e-2, None)
    with pytest.raises(RuntimeError, match="mean must have one value per channel"):
        _C.mix_images_cpu(torch.zeros(2, 3, 4, 4), torch.ones(2), torch.zeros(2, dtype=torch.long),
                          torch.zeros(2), None, 1.0)


# --------------------------------------------------------------------------- availability
def test_backend_registered():
    assert "cpu" in L.available_backends("cpu")
    assert L.backend_status("cpu")["cpu"] == "available"
    assert isinstance(_C.with_cuda, bool)
    if not _C.with_cuda:
        assert "built without its CUDA kernels" in L._backend.unavailable_reason("cuda", "cuda")


def test_reason_reported_without_extension():
    code = ("import sys; sys.modules['lossmix_ext._C'] = None\n"
            "import lossmix_ext as L\n"
            "r = L.backend_status('cpu')['cpu']\n"
            "assert r.startswith('lossmix_ext._C was not built'), r\n"
            "assert 'cpu' not in L.available_backends('cpu')\n"
            "import torch\n"
            "x = torch.randn(3, 5); y = torch.tensor([0, 1, 2]); c = torch.ones(5)\n"
            "L.seesaw_loss(x, y, c)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- CUDA kernels
def _cuda_ready():
    return _C is not None and getattr(_C, "with_cuda", False) and HAS_CUDA


needs_cuda_kernels = pytest.mark.skipif(not _cuda_ready(), reason="the CUDA kernels were not built or no GPU")


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("c", [2, 81, 1024, 1205, 4097, 40000])  # 1024, 40000: vector loads
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["contig", "rows", "cols"])
def test_gpu_seesaw_fwd(c, dtype, layout):
    for mode, (p, q) in MODES.items():
        for sets, obj in ((1, False), (2, True)):
            x, labels, w, ow, counts = make_case(64 if c < 4097 else 5, c, sets, obj, -100 if sets == 2 else None)
            xd = make_logits(x.to(dtype).cuda(), layout)  # strided on the device
            want = oracle(xd.cpu(), labels, w, ow, counts, p, q, 1e-2, -100 if sets == 2 else None)
            dev = (lambda t: None if t is None else t.cuda())
            om = _ops.opmath_dtype(dtype)
            got = _ops.seesaw_fwd(xd, labels.cuda(), w.to(om).cuda(), None if ow is None else ow.to(om).cuda(),
                                  dev(counts), p, q, 1e-2, -100 if sets == 2 else None, "cuda")
            # the GPU kernels use fast exp / log: float32 to 1e-4
            loss, obj_l, grad = (t.cpu().double() for t in got)
            torch.testing.assert_close(loss, want[0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(obj_l, want[1], rtol=1e-4, atol=1e-4)
            rtol, atol = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-10, 1e-12), torch.float16: (2e-3, 1e-4),
                          torch.bfloat16: (1.6e-2, 1e-3)}[dtype]
            torch.testing.assert_close(grad, want[2].to(dtype).double(), rtol=rtol, atol=atol)


@pytest.mark.gpu
@needs_cuda_kernels
def test_gpu_seesaw_inplace_bwd_and_no_sync():
    x, labels, w, ow, counts = make_case(300, 1205, 2, True, None)
    x, labels, w, ow, counts = (t.cuda() for t in (x, labels, w, ow, counts))
    want = _ops.seesaw_fwd(x, labels, w, ow, counts, 0.8, 2.0, 1e-2, None, "cuda")
    buf = x.clone()
    loss, obj, grad = _backend.kernel("seesaw_fwd_inplace", "cuda")(buf, labels, w, ow, counts, 0.8, 2.0, 1e-2, None)
    assert grad is buf and torch.equal(buf, want[2]) and torch.equal(loss, want[0])
    gl, go = torch.randn(300, device="cuda"), torch.randn(300, device="cuda")
    torch.testing.assert_close(_ops.seesaw_bwd(want[2], gl, go, "cuda"), torch_backend.seesaw_bwd(want[2], gl, go))
    xl = x.clone().requires_grad_()
    with L.validation("off"):
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = L.seesaw_loss(xl[:, :1205], labels[0].clamp(max=1204), counts, backend="cuda")
            out.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("shape", [(7, 3), (600000, 5), (64, 83), (64, 1205), (33, 4098), (5, 70002)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_gpu_seesaw_bwd_shapes(shape, dtype):
    """The 2-D backward kernel (rows over blockIdx.y / threadIdx.y, columns over x): short and
    long rows, more rows than one grid covers, vector and scalar (misaligned) paths, in place
    with factors of exactly 1 on whole rows and on the class part only; vs the torch kernel."""
    n, ct = shape
    om = _ops.opmath_dtype(dtype)
    g = torch.Generator(device="cuda").manual_seed(n + ct)
    gl = torch.randn(n, generator=g, device="cuda", dtype=om)
    go = torch.randn(n, generator=g, device="cuda", dtype=om)
    gl[::3] = 1.0
    go[::6] = 1.0  # rows 0, 6, ...: both factors 1; rows 3, 9, ...: the class factor only
    for misaligned in (False, True):
        base = torch.randn(n * ct + 1, generator=g, device="cuda").to(dtype)
        grad = base[1:].view(n, ct) if misaligned else base[:-1].view(n, ct)
        for obj in (None, go):
            want = torch_backend.seesaw_bwd(grad, gl, obj)
            got = _ops.seesaw_bwd(grad, gl, obj, "cuda")
            assert torch.equal(got, want), (misaligned, obj is None)
            buf = grad.clone() if not misaligned else torch.empty(n * ct + 1, device="cuda", dtype=dtype)[1:].view(n, ct).copy_(grad)
            out = _backend.kernel("seesaw_bwd_inplace", "cuda")(buf, gl, obj)
            assert out.data_ptr() == buf.data_ptr() and torch.equal(buf, want), (misaligned, obj is None)


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gpu_mix(dtype, channels_last):
    x = _images(dtype, channels_last=channels_last)
    om = _ops.opmath_dtype(dtype)
    lam, idx = _lam(6, om), torch.tensor(INDEXES["repeats"])
    boxes = torch.tensor([[0, 0, 5, 7], [1, 2, 3, 4], [0, 0, 0, 0], [4, 6, 5, 7], [2, 2, 2, 5], [0, 1, 5, 3]])
    scale = 1 / 255 if dtype == torch.uint8 else 1.0
    for kw in ({}, dict(mean=MEAN, std=STD), dict(boxes=boxes, mean=MEAN, std=STD)):
        got = L.mix_images(x.cuda(), lam.cuda(), idx.cuda(), backend="cuda",
                           **{k: (v.cuda() if torch.is_tensor(v) else v) for k, v in kw.items()})
        mt = _mean_std(om) if "mean" in kw else (None, None)
        want = R.mix_images(x, lam, idx, kw.get("boxes"), mt[0], mt[1], scale)
        torch.testing.assert_close(got.cpu(), want, rtol=2e-3 if dtype == torch.float16 else 1e-5, atol=1e-5)
    if dtype.is_floating_point:
        xg, xr = _leaf(x.cuda()), _leaf(x)
        out = L.mix_images(xg, lam.cuda(), idx.cuda(), boxes=boxes.cuda(), mean=MEAN, std=STD, backend="cuda")
        mt = _mean_std(om)
        ref = R.mix_images(xr, lam, idx, boxes, mt[0], mt[1])
        cot = torch.randn_like(ref)
        (out * cot.cuda()).sum().backward()
        (ref * cot).sum().backward()
        torch.testing.assert_close(xg.grad.cpu(), xr.grad, rtol=2e-3 if dtype == torch.float16 else 1e-5, atol=1e-5)
        lam_p, idx_p = L.sample_mix(6, pairing="pairs", device="cuda")
        y = x.cuda().clone()
        L.mix_images_(y, lam_p.to(om), idx_p, backend="cuda")
        torch.testing.assert_close(y.cpu(), R.mix_images(x, lam_p.cpu().to(om), idx_p.cpu()))
