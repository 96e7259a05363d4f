"""Registered ops: opcheck, float64 gradcheck, torch.compile(fullgraph=True), backend selection."""
import pytest
import torch

import lossmix_ext as L
from lossmix_ext import _ops
from lossmix_ext import _reference as R

SEESAW_BACKENDS = L.available_backends("cpu", op="seesaw_fwd")
MIX_BACKENDS = L.available_backends("cpu", op="mix_images")


def _seesaw_args(n=6, c=5, obj=False, sets=2, ignore=None, dtype=torch.float32, p=0.8, q=2.0):
    ct = c + 2 if obj else c
    x = torch.randn(n, ct, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, c + 1 if obj else c, (sets, n))
    if ignore is not None:
        labels[0, 0] = ignore
    om = _ops.opmath_dtype(dtype)
    w = torch.rand(sets, n, dtype=om)
    ow = torch.rand(sets, n, dtype=om) if obj else None
    counts = torch.randint(0, 30, (c,)).to(om)
    ig = c if obj else ignore
    return x, labels, w, ow, counts, p, q, 1e-2, ig


# ---------------------------------------------------------------- opcheck
@pytest.mark.parametrize("backend", SEESAW_BACKENDS)
@pytest.mark.parametrize("obj,sets,ignore,pq", [(False, 1, None, (0.8, 2.0)), (True, 2, None, (0.8, 2.0)),
                                                (False, 2, -100, (0.0, 0.0))])
def test_opcheck_seesaw(backend, obj, sets, ignore, pq):
    args = _seesaw_args(obj=obj, sets=sets, ignore=ignore, p=pq[0], q=pq[1])
    torch.library.opcheck(_ops.seesaw_fwd, args + (backend,))
    grad = torch.randn(6, args[0].shape[1])
    torch.library.opcheck(_ops.seesaw_bwd, (grad, torch.rand(6), torch.rand(6) if obj else None, backend))


@pytest.mark.parametrize("backend", MIX_BACKENDS)
def test_opcheck_mix(backend):
    img = torch.randn(4, 3, 5, 6, requires_grad=True)
    lam, idx = torch.rand(4), torch.tensor([1, 0, 3, 3])
    boxes = torch.tensor([[0, 0, 2, 3], [1, 1, 5, 6], [0, 0, 0, 0], [2, 2, 3, 3]])
    std = torch.tensor([0.5, 1.0, 2.0])
    torch.library.opcheck(_ops.mix_images, (img, lam, idx, None, None, None, 1.0, None, backend))
    torch.library.opcheck(_ops.mix_images, (img, lam, idx, boxes, std * 0.1, std, 0.5, None, backend))
    u8 = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8)
    torch.library.opcheck(_ops.mix_images, (u8, lam, idx, None, None, None, 1 / 255, torch.float32, backend))
    g = torch.randn(4, 3, 5, 6)
    torch.library.opcheck(_ops.mix_images_backward, (g, lam, idx, boxes, std, 0.5, torch.float32, backend))
    torch.library.opcheck(_ops.mix_images_, (torch.randn(4, 7), lam, torch.tensor([3, 2, 1, 0]), None, backend))
    torch.library.opcheck(_ops.mix_images_, (torch.randn(4, 3, 5, 6), lam, torch.tensor([3, 2, 1, 0]), boxes, backend))


def test_opcheck_count_labels():
    torch.library.opcheck(_ops.count_labels_, (torch.zeros(6), torch.randint(0, 6, (2, 9))))


# ---------------------------------------------------------------- gradcheck (float64)
def _dominant_label_logits(n, c):
    """Logits whose label column dominates, so compensation is inactive and the detached-σ
    gradient equals the true gradient (required for a numerical gradcheck with q > 0)."""
    x = torch.randn(n, c, dtype=torch.float64)
    labels = torch.randint(0, c, (n,))
    x[torch.arange(n), labels] += 6.0
    return x, labels


def test_gradcheck_reference():
    n, c = 5, 4
    x, labels = _dominant_label_logits(n, c)
    counts = torch.tensor([1.0, 40, 3, 9], dtype=torch.float64)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: R.seesaw_ce(x, labels, counts, 0.8, 2.0, 1e-2), (x,))
    xr = torch.randn(n, c, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: R.seesaw_ce(x, labels, counts, 1.2, 0.0, 1e-2), (xr,))
    lb = torch.randint(0, c, (n,))
    lam = torch.rand(n, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: R.mixed_cross_entropy(x, labels, lb, lam), (xr,))
    img = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: R.mix_images(x, lam[:3], torch.tensor([2, 2, 0])), (img,))
    la_ = torch.rand(n, 2, dtype=torch.float64, requires_grad=True)
    lb_ = torch.rand(n, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: R.lossmix_reduce(a, b, lam), (la_, lb_))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_public_seesaw(reduction):
    n, c = 5, 4
    x, labels = _dominant_label_logits(n, c)
    x.requires_grad_(True)
    counts = torch.tensor([1.0, 40, 3, 9], dtype=torch.float64)
    lw = torch.rand(n, dtype=torch.float64)
    af = 3.0 if reduction == "mean" else None
    lam = torch.rand(n, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: L.seesaw_loss(x, labels, counts, label_weights=lw, reduction=reduction, avg_factor=af,
                                backend="torch"), (x,))
    assert torch.autograd.gradcheck(
        lambda x: L.seesaw_loss_mixed(x, labels, labels, lam, counts,
                                      reduction=reduction, backend="torch"), (x,))
    xq = torch.randn(n, c, dtype=torch.float64, requires_grad=True)
    lb = torch.randint(0, c, (n,))
    assert torch.autograd.gradcheck(
        lambda x: L.seesaw_loss_mixed(x, labels, lb, lam, counts, q=0.0,
                                      reduction=reduction, backend="torch"), (xq,))
    lb[1] = -100
    assert torch.autograd.gradcheck(
        lambda x: L.mixed_cross_entropy(x, labels, lb, lam, label_weights=lw,
                                        reduction=reduction, backend="torch"), (xq,))


def test_gradcheck_public_module_and_mix():
    C, n = 4, 6
    x = torch.randn(n, C + 2, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, C + 1, (n,))
    counts = torch.rand(C + 1, dtype=torch.float64) * 20
    lam = torch.rand(n, dtype=torch.float64)

    def f(x):
        obj, cls = L.seesaw_module_loss(x, labels, counts, C, q=0.0, labels_b=labels.flip(0), lam=lam,
                                        backend="torch")
        return obj + 2 * cls

    assert torch.autograd.gradcheck(f, (x,))
    img = torch.randn(4, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[0, 0, 2, 2], [1, 2, 4, 5], [0, 0, 0, 0], [0, 0, 4, 5]])
    assert torch.autograd.gradcheck(
        lambda x: L.mix_images(x, lam[:4], torch.tensor([1, 1, 3, 0]), boxes=boxes, mean=[0.1, 0.2, 0.3],
                               std=[0.5, 2.0, 1.0], scale=0.7, backend="torch"), (img,))


# ---------------------------------------------------------------- torch.compile(fullgraph=True)
def test_compile_fullgraph_matches_eager():
    C, n = 6, 10
    counts = torch.rand(C) * 50
    module_e = L.SeesawLoss(num_classes=C)
    module_c = L.SeesawLoss(num_classes=C)

    def step(module, x, xm, img, labels, labels_b, mlabels, lam, index):
        d = module(xm, mlabels, avg_factor=4.0)
        total = d["loss_cls_objectness"] + d["loss_cls_classes"]
        total = total + L.seesaw_loss(x, labels, counts)
        total = total + L.seesaw_loss_mixed(x, labels, labels_b, lam, counts, reduction="sum")
        total = total + L.mixed_cross_entropy(x, labels, labels_b, lam)
        mixed = L.mix_images(img, lam, index)
        per = mixed.flatten(1).pow(2).mean(1)
        total = total + L.lossmix_reduce(per, per.flip(0), lam)
        return total

    compiled = torch.compile(step, fullgraph=True)
    x = torch.randn(n, C)
    xm = torch.randn(n, C + 2)
    img = torch.randn(n, 3, 4, 4)
    labels, labels_b = torch.randint(0, C, (n,)), torch.randint(0, C, (n,))
    mlabels = torch.randint(0, C + 1, (n,))
    lam, index = L.sample_mix(n, generator=torch.Generator().manual_seed(1))
    grads = []
    outs = []
    for fn, module in ((step, module_e), (compiled, module_c)):
        leaves = [t.clone().requires_grad_(True) for t in (x, xm, img)]
        out = fn(module, *leaves, labels, labels_b, mlabels, lam, index)
        out.backward()
        outs.append(out.detach())
        grads.append([t.grad for t in leaves])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    for ge, gc in zip(*grads):
        torch.testing.assert_close(gc, ge, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(module_c.cum_samples, module_e.cum_samples)


# ---------------------------------------------------------------- backend selection
def test_backend_selection_and_errors(monkeypatch):
    assert "torch" in L.available_backends()
    assert "torch" in L.available_backends("cpu", op="seesaw_fwd")
    status = L.backend_status("cpu")
    assert status["torch"] == "available"
    assert set(status) == {"torch", "triton", "cuda", "cpu"}
    with pytest.raises(L.BackendUnavailableError, match="cuda"):
        if "cuda" in L.available_backends("cpu"):
            pytest.skip("cuda backend usable on cpu tensors?")
        L.seesaw_loss(torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.ones(4), backend="cuda")
    with pytest.raises(L.BackendUnavailableError, match="unknown backend"):
        L.seesaw_loss(torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.ones(4), backend="nope")
    prev = L.set_default_backend("torch")
    try:
        x = torch.randn(3, 4)
        torch.testing.assert_close(L.seesaw_loss(x, torch.tensor([0, 1, 2]), torch.ones(4)),
                                   R.seesaw_loss(x, torch.tensor([0, 1, 2]), torch.ones(4)))
    finally:
        L.set_default_backend(prev)
    with pytest.raises(ValueError, match="backend must be"):
        L.set_default_backend("fastest")


def test_all_cpu_backends_agree_on_a_small_case():
    """Every backend usable on CPU tensors here (torch, native cpu if built, triton under the
    interpreter) gives the reference's values and gradients."""
    C, n = 9, 7
    x = torch.randn(n, C + 2)
    labels = torch.randint(0, C + 1, (n,))
    counts = torch.rand(C + 1) * 30
    x_ref = x.clone().requires_grad_(True)
    obj, cls = R.seesaw_module_loss(x_ref, labels, counts, C)
    (obj + cls).backward()
    for backend in SEESAW_BACKENDS:
        xb = x.clone().requires_grad_(True)
        o, c = L.seesaw_module_loss(xb, labels, counts, C, backend=backend)
        (o + c).backward()
        torch.testing.assert_close(o, obj, rtol=1e-5, atol=1e-6, msg=backend)
        torch.testing.assert_close(c, cls, rtol=1e-5, atol=1e-6, msg=backend)
        torch.testing.assert_close(xb.grad, x_ref.grad, rtol=1e-5, atol=1e-7, msg=backend)


@pytest.mark.parametrize("backend", SEESAW_BACKENDS)
def test_repeated_backward_and_scaled_upstreams(backend):
    """The saved gradient is handed out only by a backward that frees the graph (otherwise it
    would become ``x.grad`` and be modified by the next accumulation): repeated backward passes
    accumulate, scaled upstreams scale."""
    C, n = 5, 6
    x0 = torch.randn(n, C + 2)
    labels = torch.randint(0, C + 1, (n,))
    counts = torch.rand(C + 1) * 20
    xr = x0.clone().requires_grad_(True)
    obj, cls = R.seesaw_module_loss(xr, labels, counts, C)
    (g_ref,) = torch.autograd.grad(obj + cls, xr)
    x = x0.clone().requires_grad_(True)
    o, c = L.seesaw_module_loss(x, labels, counts, C, backend=backend)
    total = o + c
    total.backward(retain_graph=True)
    total.backward(retain_graph=True)
    torch.testing.assert_close(x.grad, 2 * g_ref, rtol=1e-5, atol=1e-7)
    (3 * total).backward()
    torch.testing.assert_close(x.grad, 5 * g_ref, rtol=1e-5, atol=1e-6)
    x.grad = None
    o, c = L.seesaw_module_loss(x, labels, counts, C, backend=backend)
    (o + 0.5 * c).backward()  # different upstream per output: the scaling kernel
    obj, cls = R.seesaw_module_loss(xr, labels, counts, C)
    (g_mixed,) = torch.autograd.grad(obj + 0.5 * cls, xr)
    torch.testing.assert_close(x.grad, g_mixed, rtol=1e-5, atol=1e-7)
