"""The ops in the dispatcher: C++ registration (schemas, CPU / CUDA / autograd kernels), the
composite ops of the lean host path (seesaw_loss, seesaw_count_, lossmix_reduce) against their
Python forms and the formulas, both weight builders of seesaw_loss, the eager pybind11 entry,
validation modes reaching the native checks, the build without the extension (simulated in a
subprocess), and CUDA-graph capture (GPU)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import lossmix_ext as L
from lossmix_ext import _ops
from lossmix_ext import _validation as V

NATIVE = _ops.NATIVE_REGISTRATION
needs_native = pytest.mark.skipif(not NATIVE, reason="needs lossmix_ext._C (the C++ registration)")
SEESAW_BACKENDS = L.available_backends("cpu", op="seesaw_fwd")


# ------------------------------------------------------------------ the registration itself
@needs_native
@pytest.mark.parametrize("op", ["seesaw_fwd", "seesaw_bwd", "count_labels_", "seesaw_count_"])
def test_device_kernels_are_cpp(op):
    name = f"lossmix_ext::{op}"
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, key), (name, key)


@needs_native
def test_autograd_and_composite_kernels():
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    assert has("lossmix_ext::seesaw_fwd", "Autograd")
    assert has("lossmix_ext::seesaw_loss", "Autograd")
    assert has("lossmix_ext::seesaw_loss", "CompositeExplicitAutograd")
    assert has("lossmix_ext::lossmix_reduce", "CompositeImplicitAutograd")
    assert isinstance(_ops.seesaw_fwd, torch._ops.OpOverload)
    # the public loss is one node: no SumBackward after the op
    x = torch.randn(4, 3, requires_grad=True)
    loss = L.seesaw_loss(x, torch.tensor([0, 1, 2, 0]), torch.ones(3))
    assert "Seesaw" in type(loss.grad_fn).__name__ or "Cpp" in type(loss.grad_fn).__name__
    assert len(loss.grad_fn.next_functions) >= 1 and loss.grad_fn.next_functions[0][0] is not None


# ------------------------------------------------------------------ seesaw_loss: modes
def _mode_args(mode, n=7, c=5, dtype=torch.float32, seed=0):
    """Arguments of _ops.seesaw_loss (without the backend) for one mode of the public API."""
    g = torch.Generator().manual_seed(seed)
    om = _ops.opmath_dtype(dtype)
    obj = mode.startswith("module")
    ct = c + 2 if obj else c
    x = torch.randn(n, ct, generator=g).to(dtype)
    hi = c + 1 if obj else c
    la = torch.randint(0, hi, (n,), generator=g)
    lb = torch.randint(0, hi, (n,), generator=g)
    counts = (torch.rand(c + 1 if obj else c, generator=g) * 40).to(om)
    lw = (torch.rand(n, generator=g) + 0.25).to(om)
    lam = torch.rand(n, generator=g).to(om)
    base = dict(labels_b=None, lam=None, lam_value=1.0, label_weights=None, counts=counts, p=0.8, q=2.0, eps=1e-2,
                ignore_index=None, objectness=obj, reduction="mean", avg_t=None, avg=None, loss_weight=1.0)
    extra = {
        "single": {},
        "single_sum_lw": dict(label_weights=lw, reduction="sum"),
        "single_none": dict(reduction="none"),
        "pair_tensor": dict(labels_b=lb, lam=lam),
        "pair_scalar_avg": dict(labels_b=lb, lam_value=0.3, avg=3.5),
        "ce_ignore": dict(labels_b=lb, lam=lam, counts=None, p=0.0, q=0.0, eps=1.0, ignore_index=-100),
        "module": dict(label_weights=lw, loss_weight=1.5),
        "module_pair_avg_t": dict(labels_b=lb, lam=lam, avg_t=torch.tensor(5.0)),
        "module_none": dict(reduction="none", labels_b=lb, lam_value=0.6),
        "module_q1": dict(q=1.0, reduction="sum"),
    }[mode]
    if mode == "ce_ignore":
        la[1] = -100
        lb[2] = -100
    base.update(extra)
    return x, la, base


def _op_args(x, la, a, backend):
    return (x, la, a["labels_b"], a["lam"], a["lam_value"], a["label_weights"], a["counts"], a["p"], a["q"],
            a["eps"], a["ignore_index"], a["objectness"], a["reduction"], a["avg_t"], a["avg"], a["loss_weight"],
            backend)


MODES = ["single", "single_sum_lw", "single_none", "pair_tensor", "pair_scalar_avg", "ce_ignore", "module",
         "module_pair_avg_t", "module_none", "module_q1"]


def _run(fn, x, la, a, backend):
    xg = x.clone().requires_grad_(True)
    cls, obj = fn(*_op_args(xg, la, a, backend))[:2]
    total = cls.sum() + (obj.sum() if obj.numel() else 0)
    total.backward()
    return cls.detach(), obj.detach(), xg.grad


@needs_native
@pytest.mark.parametrize("backend", SEESAW_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("generic", [False, True], ids=["cpu_weights", "aten_weights"])
def test_seesaw_loss_op_matches_python_composite(mode, backend, generic):
    """The C++ composite (both of its weight builders: the CPU loop and the ATen path that CUDA
    tensors take) equals the Python composite over seesaw_fwd, values and gradients."""
    x, la, a = _mode_args(mode)
    _ops._native.set_generic_weights(generic)
    try:
        got = _run(_ops.seesaw_loss, x, la, a, backend)
        eager = _run(_ops.seesaw_loss_eager, x, la, a, backend)
    finally:
        _ops._native.set_generic_weights(False)
    want = _run(_ops.seesaw_loss_py, x, la, a, backend)
    for g, e, w in zip(got, eager, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(e, g, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["single", "pair_tensor", "ce_ignore", "module_pair_avg_t"])
def test_seesaw_loss_float64_gradcheck(mode):
    x, la, a = _mode_args(mode, n=5, c=4, dtype=torch.float64)
    a["q"] = 0.0  # the detached-σ compensation has no numerical derivative
    x = x.clone().requires_grad_(True)
    fn = lambda z: _ops.seesaw_loss(*_op_args(z, la, a, "torch"))[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6)


def test_public_losses_match_the_formulas():
    """Golden values from the formulas: plain CE where Seesaw reduces to it (p = q = 0)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 6, generator=g)
    y, yb = torch.randint(0, 6, (9,), generator=g), torch.randint(0, 6, (9,), generator=g)
    y[0] = -100
    torch.testing.assert_close(L.seesaw_loss(x, y.clamp(min=0), torch.ones(6), p=0.0, q=0.0),
                               F.cross_entropy(x, y.clamp(min=0)))
    want = 0.3 * F.cross_entropy(x, y) + 0.7 * F.cross_entropy(x, yb)
    torch.testing.assert_close(L.mixed_cross_entropy(x, y, yb, 0.3), want)
    a, b, lam = torch.rand(9, 3, generator=g), torch.rand(9, 3, generator=g), torch.rand(9, generator=g)
    torch.testing.assert_close(L.lossmix_reduce(a, b, lam), (lam[:, None] * a + (1 - lam[:, None]) * b).mean())
    torch.testing.assert_close(L.lossmix_reduce(a, b, 0.25, reduction="sum"), (0.25 * a + 0.75 * b).sum())


# ------------------------------------------------------------------ opcheck of the new ops
@needs_native
@pytest.mark.parametrize("mode", ["single", "pair_tensor", "ce_ignore", "module", "module_none"])
def test_opcheck_seesaw_loss(mode):
    x, la, a = _mode_args(mode)
    x.requires_grad_(True)
    torch.library.opcheck(_ops.seesaw_loss, _op_args(x, la, a, "cpu"))


@needs_native
def test_opcheck_seesaw_count_and_lossmix_reduce():
    torch.library.opcheck(_ops.seesaw_count_, (torch.zeros(6), torch.randint(0, 6, (9,)), None, True))
    torch.library.opcheck(_ops.seesaw_count_, (torch.zeros(6), torch.randint(0, 6, (9,)),
                                               torch.randint(0, 6, (9,)), False))
    a = torch.rand(5, 3, requires_grad=True)
    b = torch.rand(5, 3, requires_grad=True)
    torch.library.opcheck(_ops.lossmix_reduce, (a, b, torch.rand(5), 1.0, None, "mean", None, None))
    torch.library.opcheck(_ops.lossmix_reduce, (a, b, None, 0.3, torch.rand(3), "sum", None, None))


# ------------------------------------------------------------------ value checks on the native path
def test_composite_names_the_label_set_and_follows_the_mode():
    x = torch.randn(4, 5)
    good, bad = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 7, 3])
    with pytest.raises(ValueError, match=r"labels_b must lie in \[0, 4\]"):
        L.seesaw_loss_mixed(x, good, bad, 0.5, torch.ones(5))
    with pytest.raises(ValueError, match=r"labels_a must lie in \[0, 4\]"):
        L.mixed_cross_entropy(x, bad, good, 0.5)
    with pytest.raises(ValueError, match="lam must lie in"):
        L.lossmix_reduce(torch.rand(4), torch.rand(4), torch.tensor([0.1, 1.5, 0.2, 0.3]))
    with pytest.raises(ValueError, match="lam must lie in"):
        L.lossmix_reduce(torch.rand(4), torch.rand(4), torch.tensor([0.1, float("nan"), 0.2, 0.3]))
    with V.validation("off"):  # no check (the native copy of the mode follows): the bad row has no class loss
        out = L.seesaw_loss(x, bad, torch.ones(5), p=0.0, q=0.0)
        assert torch.isfinite(out)
        L.lossmix_reduce(torch.rand(4), torch.rand(4), torch.tensor([0.1, 1.5, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\]"):  # and back on
        L.seesaw_loss(x, bad, torch.ones(5))


def test_module_checks_both_sets_before_counting():
    m = L.SeesawLoss(num_classes=3)
    x = torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"labels_b must lie in \[0, 3\]"):
        m(x, torch.tensor([0, 1, 2, 3]), labels_b=torch.tensor([0, 4, 1, 1]), lam=0.5)
    assert m.cum_samples.tolist() == [0.0, 0.0, 0.0, 0.0]
    m.cum_samples[1] = float("nan")
    with pytest.raises(ValueError, match="cum_samples must be finite"):
        m(x, torch.tensor([0, 1, 2, 3]))
    assert m.cum_samples[0] == 0.0
    m.cum_samples[1] = 0.0
    m(x, torch.tensor([0, 1, 2, 3]), labels_b=torch.tensor([3, 3, 1, 1]), lam=0.5)
    assert m.cum_samples.tolist() == [1.0, 3.0, 1.0, 3.0]


# ------------------------------------------------------------------ the build without the extension
_NO_NATIVE_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    import lossmix_ext as L
    from lossmix_ext import _ops
    assert not _ops.NATIVE_REGISTRATION
    assert isinstance(_ops.seesaw_fwd, torch._library.custom_ops.CustomOpDef)
    torch.manual_seed(0)
    x = torch.randn(7, 7)
    y, yb = torch.randint(0, 6, (7,)), torch.randint(0, 6, (7,))
    out = {}
    def record(name, fn, inp):
        inp = inp.clone().requires_grad_(True)
        loss = fn(inp)
        loss.backward()
        out[name] = [loss.item(), inp.grad.flatten().tolist()]
    counts = torch.rand(7) * 30
    record("seesaw", lambda z: L.seesaw_loss(z, y, counts), x)
    record("mixed", lambda z: L.seesaw_loss_mixed(z, y, yb, 0.3, counts, reduction="sum"), x)
    record("ce", lambda z: L.mixed_cross_entropy(z, y, yb, torch.linspace(0, 1, 7)), x)
    m = L.SeesawLoss(num_classes=5)
    record("module", lambda z: sum(m(z, y, labels_b=yb, lam=0.4).values()), x)
    out["counts"] = m.cum_samples.tolist()
    record("reduce", lambda z: L.lossmix_reduce(z[:, 0], z[:, 1], torch.linspace(0, 1, 7)), x)
    try:
        L.seesaw_loss_mixed(x, y, yb + 6, 0.3, counts)
    except ValueError as exc:
        out["error"] = str(exc)
    json.dump(out, sys.stdout)
""")


def test_build_without_extension_matches(tmp_path):
    """The Python registration (a build without lossmix_ext._C) computes the same losses,
    gradients, counts and errors as this process."""
    env = dict(os.environ, LOSSMIX_EXT_NO_NATIVE="1")
    res = subprocess.run([sys.executable, "-c", _NO_NATIVE_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    other = json.loads(res.stdout)
    env_here = dict(os.environ)
    env_here.pop("LOSSMIX_EXT_NO_NATIVE", None)
    res_here = subprocess.run([sys.executable, "-c", _NO_NATIVE_SCRIPT.replace(
        "assert not _ops.NATIVE_REGISTRATION", "").replace(
        "assert isinstance(_ops.seesaw_fwd, torch._library.custom_ops.CustomOpDef)", "")],
        env=env_here, capture_output=True, text=True, timeout=600)
    assert res_here.returncode == 0, res_here.stderr[-3000:]
    here = json.loads(res_here.stdout)
    assert other.keys() == here.keys()
    assert other["error"] == here["error"] and "labels_b" in here["error"]
    assert other["counts"] == here["counts"]
    for k in ("seesaw", "mixed", "ce", "module", "reduce"):
        torch.testing.assert_close(torch.tensor(other[k][0]), torch.tensor(here[k][0]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.tensor(other[k][1]), torch.tensor(here[k][1]), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ CUDA graphs (GPU)
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
def test_loss_forward_backward_captures_in_a_cuda_graph(backend):
    """The whole loss (count update, forward, backward) has no host sync and no data-dependent
    host allocation: it captures in a CUDA graph, and replays match eager calls."""
    if L.available_backends("cuda", op="seesaw_fwd").count(backend) == 0:
        pytest.skip(f"backend {backend} not available on cuda")
    dev = torch.device("cuda")
    C, n = 80, 256
    g = torch.Generator(device="cpu").manual_seed(0)
    x_static = torch.randn(n, C + 2, generator=g).to(dev).requires_grad_(True)
    y_static = torch.randint(0, C + 1, (n,), generator=g).to(dev)
    yb_static = torch.randint(0, C + 1, (n,), generator=g).to(dev)
    lam_static = torch.rand(n, generator=g).to(dev)
    module = L.SeesawLoss(num_classes=C, backend=backend).to(dev)
    ref = L.SeesawLoss(num_classes=C, backend=backend).to(dev)

    def step(m, x, y, yb, lam):
        d = m(x, y, labels_b=yb, lam=lam)
        total = d["loss_cls_objectness"] + d["loss_cls_classes"]
        total = total + L.mixed_cross_entropy(x[:, :C], y.clamp(max=C - 1), yb.clamp(max=C - 1), lam,
                                              backend=backend)
        total = total + L.lossmix_reduce(x[:, 0], x[:, 1], lam)
        total.backward()
        return total

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up (lazy init, autotuning) outside the capture
        for _ in range(2):
            x_static.grad = None
            step(module, x_static, y_static, yb_static, lam_static)
    torch.cuda.current_stream().wait_stream(s)
    module.cum_samples.zero_()
    x_static.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_static = step(module, x_static, y_static, yb_static, lam_static)
    module.cum_samples.zero_()
    for seed in (1, 2):
        g.manual_seed(seed)
        x_new = torch.randn(n, C + 2, generator=g).to(dev)
        y_new = torch.randint(0, C + 1, (n,), generator=g).to(dev)
        with torch.no_grad():
            x_static.copy_(x_new)
            x_static.grad.zero_()
        y_static.copy_(y_new)
        graph.replay()
        torch.cuda.synchronize()
        xe = x_new.clone().requires_grad_(True)
        want = step(ref, xe, y_new, yb_static, lam_static)
        torch.testing.assert_close(out_static, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(x_static.grad, xe.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(module.cum_samples, ref.cum_samples)
