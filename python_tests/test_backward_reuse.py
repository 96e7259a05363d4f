"""The Seesaw backward reuses the gradient saved in the forward as its result (scaled in place,
rows scaled by exactly 1 untouched) only when nothing else can see that buffer any more: the
graph is not kept, no other tensor shares its storage, eager mode, no saved-tensor hooks.
Every other case must take the copying path and give the same numbers."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import lossmix_ext as L
from lossmix_ext import _ops
from lossmix_ext import _reference as R

SEESAW_BACKENDS = L.available_backends("cpu", op="seesaw_fwd")
NATIVE = _ops._native is not None
needs_native = pytest.mark.skipif(not NATIVE, reason="the reuse path needs lossmix_ext._C")


def _op_inputs(n=6, C=5, obj=False, sets=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    ct = C + 2 if obj else C
    x = torch.randn(n, ct, generator=g)
    labels = torch.randint(0, C + 1 if obj else C, (sets, n), generator=g)
    weights = torch.rand(sets, n, generator=g) + 0.5
    obj_w = torch.rand(sets, n, generator=g) + 0.5 if obj else None
    counts = torch.rand(C, generator=g) * 30
    return x, labels, weights, obj_w, counts


def _call(x, labels, weights, obj_w, counts, backend):
    return torch.ops.lossmix_ext.seesaw_fwd(x, labels, weights, obj_w, counts, 0.8, 2.0, 0.01, None, backend)


def _expected_grad(x0, labels, weights, obj_w, counts, up_cls, up_obj):
    """d(Σ up_cls·loss + Σ up_obj·obj_loss)/dx from the torch backend's forward gradient."""
    _, _, g = _call(x0, labels, weights, obj_w, counts, "torch")
    scale = up_cls[:, None].expand_as(g).clone()
    if obj_w is not None:
        scale[:, -2:] = up_obj[:, None]
    return g * scale


def _run(backend, x0, labels, weights, obj_w, counts, up_cls, up_obj, keep_output=False):
    """Backward through the op with explicit upstreams; returns (x.grad, whether the forward's
    gradient buffer became the result, the kept gradient output or None)."""
    x = x0.clone().requires_grad_(True)
    loss, obj_loss, grad = _call(x, labels, weights, obj_w, counts, backend)
    ptr = grad.data_ptr()
    kept = grad if keep_output else None
    kept_before = grad.clone() if keep_output else None
    del grad
    seen = []
    x.register_hook(lambda g: seen.append(g.data_ptr()))
    outs, ups = [loss], [up_cls]
    if obj_w is not None:
        outs.append(obj_loss)
        ups.append(up_obj)
    torch.autograd.backward(outs, ups)
    if keep_output:
        torch.testing.assert_close(kept, kept_before, rtol=0, atol=0)  # the caller's tensor is untouched
    return x.grad, seen[0] == ptr


@needs_native
@pytest.mark.parametrize("backend", SEESAW_BACKENDS)
@pytest.mark.parametrize("obj", [False, True])
@pytest.mark.parametrize("sets", [1, 2])
@pytest.mark.parametrize("upstream", ["ones", "scalar", "rows"])
def test_reused_gradient_is_correct(backend, obj, sets, upstream):
    x0, labels, weights, obj_w, counts = _op_inputs(obj=obj, sets=sets, seed=sets)
    n = x0.shape[0]
    if upstream == "ones":
        up_cls, up_obj = torch.ones(n), torch.ones(n)
    elif upstream == "scalar":
        up_cls, up_obj = torch.full((n,), 0.75), torch.full((n,), 1.5)
    else:  # some rows exactly 1 (skipped), others not, classes and objectness differing
        up_cls = torch.tensor([1.0, 0.5, 1.0, 2.0, -1.0, 1.0])
        up_obj = torch.tensor([1.0, 1.0, 3.0, 2.0, 1.0, 0.25])
    want = _expected_grad(x0, labels, weights, obj_w, counts, up_cls, up_obj)
    got, reused = _run(backend, x0, labels, weights, obj_w, counts, up_cls, up_obj)
    if backend != "triton":  # the Triton interpreter keeps references to launched CPU tensors
        assert reused, "nothing else held the gradient: the backward should have reused it"
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@needs_native
@pytest.mark.parametrize("backend", SEESAW_BACKENDS)
def test_gradient_output_held_by_caller_is_not_reused(backend):
    x0, labels, weights, obj_w, counts = _op_inputs(obj=True)
    up = torch.full((x0.shape[0],), 0.5)
    want = _expected_grad(x0, labels, weights, obj_w, counts, up, up)
    got, reused = _run(backend, x0, labels, weights, obj_w, counts, up, up, keep_output=True)
    assert not reused
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@needs_native
def test_view_of_gradient_output_prevents_reuse():
    x0, labels, weights, obj_w, counts = _op_inputs()
    x = x0.clone().requires_grad_(True)
    loss, _, grad = _call(x, labels, weights, obj_w, counts, "cpu")
    row = grad[1]  # a view: shares the storage
    row_before = row.clone()
    del grad
    loss.backward(torch.full_like(loss, 2.0))
    torch.testing.assert_close(row, row_before, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, 2 * _call(x0, labels, weights, obj_w, counts, "torch")[2])


@pytest.mark.parametrize("backend", SEESAW_BACKENDS)
def test_retain_graph_twice_then_free(backend):
    x0, labels, weights, obj_w, counts = _op_inputs(obj=True)
    x = x0.clone().requires_grad_(True)
    loss, obj_loss, _ = _call(x, labels, weights, obj_w, counts, backend)
    total = 0.5 * loss.sum() + obj_loss.sum()
    n = x0.shape[0]
    want = _expected_grad(x0, labels, weights, obj_w, counts, torch.full((n,), 0.5), torch.ones(n))
    total.backward(retain_graph=True)
    total.backward()  # the last one may reuse the buffer
    torch.testing.assert_close(x.grad, 2 * want, rtol=1e-6, atol=1e-7)
    with pytest.raises(RuntimeError, match="second time"):
        total.backward()


@pytest.mark.parametrize("backend", SEESAW_BACKENDS)
def test_modified_gradient_output_is_detected(backend):
    x0, labels, weights, obj_w, counts = _op_inputs()
    x = x0.clone().requires_grad_(True)
    loss, _, grad = _call(x, labels, weights, obj_w, counts, backend)
    grad.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.sum().backward()


@pytest.mark.parametrize("backend", SEESAW_BACKENDS)
def test_create_graph_and_autograd_grad(backend):
    x0, labels, weights, obj_w, counts = _op_inputs()
    n = x0.shape[0]
    want = _expected_grad(x0, labels, weights, obj_w, counts, torch.ones(n), None)
    x = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_call(x, labels, weights, obj_w, counts, backend)[0].sum(), x, create_graph=True)
    torch.testing.assert_close(g, want, rtol=1e-6, atol=1e-7)
    (g,) = torch.autograd.grad(_call(x, labels, weights, obj_w, counts, backend)[0].sum(), x)
    torch.testing.assert_close(g, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", SEESAW_BACKENDS)
def test_accumulation_into_existing_leaf_grad(backend):
    x0, labels, weights, obj_w, counts = _op_inputs()
    n = x0.shape[0]
    want = _expected_grad(x0, labels, weights, obj_w, counts, torch.ones(n), None)
    x = x0.clone().requires_grad_(True)
    for _ in range(3):
        _call(x, labels, weights, obj_w, counts, backend)[0].sum().backward()
    torch.testing.assert_close(x.grad, 3 * want, rtol=1e-6, atol=1e-6)


@needs_native
def test_saved_tensor_hooks_see_the_gradient_and_disable_reuse():
    x0, labels, weights, obj_w, counts = _op_inputs()
    x = x0.clone().requires_grad_(True)
    packed = []

    def pack(t):
        packed.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _, grad = _call(x, labels, weights, obj_w, counts, "cpu")
    assert tuple(x0.shape) in [tuple(s) for s in packed]
    ptr = grad.data_ptr()
    del grad
    seen = []
    x.register_hook(lambda g: seen.append(g.data_ptr()))
    loss.sum().backward()
    assert seen[0] != ptr
    torch.testing.assert_close(x.grad, _call(x0, labels, weights, obj_w, counts, "torch")[2])


def test_without_the_extension_the_backward_copies():
    """The Python registration of the ops (a build without lossmix_ext._C, simulated by
    LOSSMIX_EXT_NO_NATIVE=1 at run time) cannot query the graph task, so it never reuses."""
    code = textwrap.dedent("""
        import torch
        from lossmix_ext import _ops
        assert _ops._native is None and not _ops.NATIVE_REGISTRATION
        g = torch.Generator().manual_seed(0)
        x0 = torch.randn(6, 7, generator=g)
        labels = torch.randint(0, 6, (1, 6), generator=g)
        w = torch.rand(1, 6, generator=g) + 0.5
        ow = torch.rand(1, 6, generator=g) + 0.5
        counts = torch.rand(5, generator=g) * 30
        up = torch.full((6,), 0.25)
        _, _, g0 = _ops.seesaw_fwd(x0, labels, w, ow, counts, 0.8, 2.0, 0.01, None, "torch")
        want = g0 * 0.25
        x = x0.clone().requires_grad_(True)
        loss, obj, grad = _ops.seesaw_fwd(x, labels, w, ow, counts, 0.8, 2.0, 0.01, None, "torch")
        ptr = grad.data_ptr()
        del grad
        seen = []
        x.register_hook(lambda t: seen.append(t.data_ptr()))
        torch.autograd.backward([loss, obj], [up, up])
        assert seen[0] != ptr
        torch.testing.assert_close(x.grad, want, rtol=1e-6, atol=1e-7)
        print("ok")
    """)
    env = dict(os.environ, LOSSMIX_EXT_NO_NATIVE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


@needs_native
def test_graph_and_storage_queries():
    assert _ops._native.graph_task_keeps_graph()  # outside a backward: the safe answer
    t = torch.zeros(4)
    assert _ops._native.storage_is_exclusive(t)
    v = t[1:]
    assert not _ops._native.storage_is_exclusive(t)
    del v
    assert _ops._native.storage_is_exclusive(t)


# --------------------------------------------------------------------------- in-place scaling kernels
@pytest.mark.parametrize("backend", SEESAW_BACKENDS)
@pytest.mark.parametrize("obj", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_bwd_inplace_kernel_matches_out_of_place(backend, obj, dtype):
    from lossmix_ext import _backend
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter rounds bfloat16 stores differently (no bf16 arithmetic there)")
    n, ct = 9, 13
    g = torch.Generator().manual_seed(3)
    grad = torch.randn(n, ct, generator=g).to(dtype)
    om = _ops.opmath_dtype(dtype)
    gl = torch.tensor([1.0, 0.5, 1.0, -2.0, 1.0, 0.0, 3.0, 1.0, 0.25], dtype=om)
    go = torch.tensor([1.0, 1.0, 2.0, 1.0, 0.5, 1.0, 1.0, 1.0, 4.0], dtype=om) if obj else None
    want = _ops.seesaw_bwd(grad, gl, go, "torch")
    buf = grad.clone()
    out = _backend.kernel("seesaw_bwd_inplace", backend)(buf, gl, go)
    assert out.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(buf, want, rtol=0, atol=0)


def test_loss_weight_is_folded_into_the_row_weights():
    C, n = 4, 8
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(n, C + 2, generator=g)
    labels = torch.randint(0, C + 1, (n,), generator=g)
    counts = torch.rand(C + 1, generator=g) * 10
    outs = []
    for lw in (1.0, 2.5):
        x = x0.clone().requires_grad_(True)
        o, c = L.seesaw_module_loss(x, labels, counts, C, loss_weight=lw, backend="torch")
        (o + c).backward()
        outs.append((o.detach(), c.detach(), x.grad))
    torch.testing.assert_close(outs[1][0], 2.5 * outs[0][0])
    torch.testing.assert_close(outs[1][1], 2.5 * outs[0][1])
    torch.testing.assert_close(outs[1][2], 2.5 * outs[0][2])
    ro, rc = R.seesaw_module_loss(x0, labels, counts, C)
    torch.testing.assert_close(outs[0][0], ro)
    torch.testing.assert_close(outs[0][1], rc)
