"""The losses compose like native PyTorch ops: double (and third-order) backward, torch.func
transforms (``grad``, ``vmap``, ``jvp``, ``hessian``), forward-mode AD and
``torch.compile(dynamic=True)``.

Golden values come from the same maths written in plain PyTorch (``lossmix_ext._reference``, whose
Seesaw compensation detaches the scores exactly as the definition says, and
``F.cross_entropy``), differentiated by autograd, and from float64 ``gradgradcheck`` (finite
differences of the backward; with the compensation off, since a detached factor is by
definition not the derivative of the scores it is computed from). Every backend usable on a
CPU runs: ``cpu`` (native), ``torch`` and ``triton`` (interpreter).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.func import grad, hessian, jvp, vmap

import lossmix_ext as L
from lossmix_ext import _reference as R

BACKENDS = [b for b in ("cpu", "torch", "triton") if b in L.available_backends("cpu", op="seesaw_fwd")]
MIX_BACKENDS = [b for b in ("cpu", "torch", "triton") if b in L.available_backends("cpu", op="mix_images")]
D = torch.float64
N, C = 7, 5


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, generator=g, dtype=D) * 2
    a = torch.tensor([0, 1, 2, 3, 4, 1, 2])
    b = torch.tensor([4, 4, 0, 1, 2, 1, 3])
    counts = torch.tensor([40.0, 3.0, 17.0, 1.0, 9.0], dtype=D)
    lam = torch.rand(N, generator=g, dtype=D)
    w = torch.rand(N, generator=g, dtype=D) + 0.5
    return x, a, b, counts, lam, w


def _module_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C + 2, generator=g, dtype=D) * 2
    a = torch.tensor([0, 5, 2, 5, 4, 1, 3])  # 5 is the background
    b = torch.tensor([5, 1, 0, 2, 5, 5, 4])
    cum = torch.tensor([40.0, 3.0, 17.0, 1.0, 9.0, 100.0], dtype=D)
    lam = torch.rand(N, generator=g, dtype=D)
    w = torch.rand(N, generator=g, dtype=D) + 0.5
    return x, a, b, cum, lam, w


def _pairs(backend):
    """(name, ours, reference) loss functions of the logits, float64, p and q on."""
    x, a, b, counts, lam, w = _case()
    xm, am, bm, cum, lamm, wm = _module_case()

    def module(f, labels_b=None, lam=None):
        def loss(z):
            obj, cls = f(z)
            return obj + cls
        return loss

    return [
        ("seesaw_loss", x, lambda z: L.seesaw_loss(z, a, counts, label_weights=w, avg_factor=3.0, backend=backend),
         lambda z: R.seesaw_loss(z, a, counts, label_weights=w, avg_factor=3.0)),
        ("seesaw_loss_mixed", x, lambda z: L.seesaw_loss_mixed(z, a, b, lam, counts, backend=backend),
         lambda z: R.seesaw_loss_mixed(z, a, b, lam, counts)),
        ("mixed_cross_entropy", x,
         lambda z: L.mixed_cross_entropy(z, a, torch.where(b == 4, -100, b), lam, label_weights=w, backend=backend),
         lambda z: R.mixed_cross_entropy(z, a, torch.where(b == 4, -100, b), lam, label_weights=w)),
        ("mixed_cross_entropy_scalar", x, lambda z: L.mixed_cross_entropy(z, a, b, 0.3, backend=backend),
         lambda z: 0.3 * F.cross_entropy(z, a) + 0.7 * F.cross_entropy(z, b)),
        ("seesaw_module_loss", xm,
         module(lambda z: L.seesaw_module_loss(z, am, cum, C, label_weights=wm, backend=backend)),
         module(lambda z: R.seesaw_module_loss(z, am, cum, C, label_weights=wm))),
        ("seesaw_module_loss_mixed", xm,
         module(lambda z: L.seesaw_module_loss(z, am, cum, C, labels_b=bm, lam=lamm, backend=backend)),
         module(lambda z: R.seesaw_module_loss_mixed(z, am, bm, lamm, cum, C))),
    ]


def _second_order(f, x0, extra=True):
    """x.grad of (d f / dx)² summed: a double backward through ``f``'s backward."""
    x = x0.clone().requires_grad_(True)
    loss = f(x) + (0.01 * (x ** 3).sum() if extra else 0)
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    (g ** 2).sum().backward()
    return x.grad


def _third_order(f, x0, v):
    """x.grad of ‖H v‖²: the derivative of a Hessian-vector product (three backward passes)."""
    x = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x), x, create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), x, create_graph=True)
    (hv ** 2).sum().backward()
    return x.grad


# --------------------------------------------------------------------------- double backward
@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_matches_plain_pytorch(backend):
    for name, x, ours, ref in _pairs(backend):
        tol = dict(rtol=1e-6, atol=1e-9) if "module" in name else dict(rtol=1e-9, atol=1e-12)  # float32 weights there
        for extra in (True, False):
            torch.testing.assert_close(_second_order(ours, x, extra), _second_order(ref, x, extra), **tol,
                                       msg=lambda m: f"{name} ({backend}): {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_third_order_matches_plain_pytorch(backend):
    v = torch.randn(N, C, generator=torch.Generator().manual_seed(3), dtype=D)
    for name, x, ours, ref in _pairs(backend):
        if "module" in name:
            continue
        torch.testing.assert_close(_third_order(ours, x, v), _third_order(ref, x, v), rtol=1e-8, atol=1e-11,
                                   msg=lambda m: f"{name} ({backend}): {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradgradcheck(backend):
    """Finite differences of the backward itself (compensation off: q = 0; mitigation on)."""
    x, a, b, counts, lam, w = _case()
    xm, am, bm, cum, lamm, wm = _module_case()
    checks = [
        (lambda z: L.seesaw_loss(z, a, counts, q=0.0, label_weights=w, backend=backend), x),
        (lambda z: L.seesaw_loss_mixed(z, a, b, lam, counts, q=0.0, backend=backend), x),
        (lambda z: L.mixed_cross_entropy(z, a, b, lam, backend=backend), x),
        (lambda z: sum(L.seesaw_module_loss(z, am, cum, C, q=0.0, labels_b=bm, lam=lamm, backend=backend)), xm),
        (lambda z: L.seesaw_loss(z, a, counts, q=0.0, reduction="none", backend=backend), x),
    ]
    for f, x0 in checks:
        assert torch.autograd.gradgradcheck(f, (x0.clone().requires_grad_(True),))


@pytest.mark.parametrize("backend", MIX_BACKENDS)
def test_mix_images_and_lossmix_reduce_second_order(backend):
    g = torch.Generator().manual_seed(1)
    img = torch.randn(4, 3, 5, 6, generator=g, dtype=D)
    lam = torch.rand(4, generator=g, dtype=D)
    idx = torch.tensor([1, 1, 3, 0])  # repeated partner
    boxes = torch.tensor([[0, 0, 2, 3], [1, 1, 5, 6], [0, 0, 0, 0], [2, 2, 4, 4]])
    mean, std = torch.tensor([0.1, 0.2, 0.3], dtype=D), torch.tensor([0.5, 2.0, 1.5], dtype=D)
    ours = lambda u: (L.mix_images(u, lam, idx, boxes=boxes, mean=mean, std=std, backend=backend) ** 3).sum()  # noqa: E731
    ref = lambda u: (R.mix_images(u, lam, idx, boxes, mean, std) ** 3).sum()  # noqa: E731
    torch.testing.assert_close(_second_order(ours, img), _second_order(ref, img), rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradgradcheck(
        lambda u: L.mix_images(u, lam, idx, boxes=boxes, std=std, backend=backend), (img.clone().requires_grad_(),))
    la, lb = torch.rand(6, dtype=D), torch.rand(6, dtype=D)
    lam6 = torch.rand(6, dtype=D)
    ours = lambda u: L.lossmix_reduce(u ** 2, u.exp(), lam6)  # noqa: E731
    ref = lambda u: R.lossmix_reduce(u ** 2, u.exp(), lam6)  # noqa: E731
    torch.testing.assert_close(_second_order(ours, la), _second_order(ref, la), rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradgradcheck(lambda u, v: L.lossmix_reduce(u, v, lam6, reduction="none"),
                                        (la.requires_grad_(), lb.requires_grad_()))


def test_half_precision_double_backward():
    """float32 / float16 logits: the second-order term from the saved low-precision gradient,
    within the dtype's tolerance of the float64 maths."""
    x, a, b, counts, lam, w = _case()
    want = _second_order(lambda z: L.seesaw_loss(z, a, counts), x)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 3e-3), (torch.bfloat16, 3e-2)):
        got = _second_order(lambda z: L.seesaw_loss(z, a, counts, backend="cpu").to(D), x.to(dtype))
        torch.testing.assert_close(got.to(D), want, rtol=tol, atol=tol * want.abs().max().item(),
                                   msg=lambda m: f"{dtype}: {m}")


def test_inplace_grad_refuses_double_backward():
    x, a, b, counts, lam, w = _case()
    leaf = x.clone().requires_grad_(True)
    loss = L.seesaw_loss(leaf * 1.0, a, counts, inplace_grad=True)
    with pytest.raises(RuntimeError, match="inplace_grad=True.*double backward.*create_graph"):
        torch.autograd.grad(loss, leaf, create_graph=True)


def test_first_order_backward_is_unchanged():
    """A plain backward still scales the saved gradient (no second-order work): the gradient is
    the fused one, exactly."""
    x, a, b, counts, lam, w = _case()
    z = x.clone().requires_grad_(True)
    loss, _, fused = torch.ops.lossmix_ext.seesaw_loss(z, a, None, None, 1.0, None, counts, 0.8, 2.0, 1e-2, None,
                                                       False, "sum", None, None, 1.0, "cpu")
    loss.backward()
    assert torch.equal(z.grad, fused.detach())


# --------------------------------------------------------------------------- torch.func
def test_func_grad_hessian_jvp_vmap():
    x, a, b, counts, lam, w = _case()
    xm, am, bm, cum, lamm, wm = _module_case()
    t = torch.randn(N, C, generator=torch.Generator().manual_seed(5), dtype=D)
    for name, x0, ours, ref in _pairs(None):
        if "module" in name:
            continue
        close = lambda got, want: torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12,  # noqa: E731
                                                            msg=lambda m: f"{name}: {m}")
        close(grad(ours)(x0), grad(ref)(x0))
        close(hessian(ours)(x0), hessian(ref)(x0))
        close(jvp(ours, (x0,), (t,))[1], jvp(ref, (x0,), (t,))[1])
        xs = torch.stack([x0, x0 * 0.5, -x0])
        close(vmap(ours)(xs), torch.stack([ref(xi) for xi in xs]))
        close(vmap(grad(ours))(xs), torch.stack([grad(ref)(xi) for xi in xs]))
    # labels batched too; and the module's loss
    labels = torch.stack([a, b, a.flip(0)])
    xs = torch.stack([x, x * 2, x - 1])
    torch.testing.assert_close(vmap(lambda z, y: L.seesaw_loss(z, y, counts))(xs, labels),
                               torch.stack([R.seesaw_loss(z, y, counts) for z, y in zip(xs, labels)]))
    mod = lambda z: sum(L.seesaw_module_loss(z, am, cum, C, labels_b=bm, lam=lamm))  # noqa: E731
    modr = lambda z: sum(R.seesaw_module_loss_mixed(z, am, bm, lamm, cum, C))  # noqa: E731
    torch.testing.assert_close(grad(mod)(xm), grad(modr)(xm), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(vmap(mod)(torch.stack([xm, -xm])), torch.stack([modr(xm), modr(-xm)]),
                               rtol=1e-6, atol=1e-9)


def test_func_on_lossmix_reduce_and_mix_images():
    g = torch.Generator().manual_seed(2)
    la, lb, lam = torch.rand(6, generator=g, dtype=D), torch.rand(6, generator=g, dtype=D), torch.rand(6, dtype=D)
    ours = lambda u: L.lossmix_reduce(u, lb, lam, reduction="sum")  # noqa: E731
    torch.testing.assert_close(grad(ours)(la), lam)
    torch.testing.assert_close(jvp(ours, (la,), (lb,))[1], (lam * lb).sum())
    torch.testing.assert_close(vmap(ours)(torch.stack([la, lb])), torch.stack([ours(la), ours(lb)]))
    img = torch.randn(4, 3, 5, 6, generator=g, dtype=D)
    lam4, idx = torch.rand(4, dtype=D), torch.tensor([2, 0, 0, 3])
    boxes = torch.tensor([[0, 0, 2, 3], [1, 1, 5, 6], [0, 0, 0, 0], [2, 2, 4, 4]])
    ours = lambda u: (L.mix_images(u, lam4, idx, boxes=boxes) ** 2).sum()  # noqa: E731
    ref = lambda u: (R.mix_images(u, lam4, idx, boxes) ** 2).sum()  # noqa: E731
    torch.testing.assert_close(grad(ours)(img), grad(ref)(img))
    torch.testing.assert_close(jvp(ours, (img,), (img.flip(0),))[1], jvp(ref, (img,), (img.flip(0),))[1])
    imgs = torch.stack([img, img * 2])
    torch.testing.assert_close(vmap(lambda u: L.mix_images(u, lam4, idx, boxes=boxes))(imgs),
                               torch.stack([R.mix_images(u, lam4, idx, boxes) for u in imgs]))


def test_forward_mode_ad():
    x, a, b, counts, lam, w = _case()
    t = torch.randn(N, C, generator=torch.Generator().manual_seed(6), dtype=D)
    want = jvp(lambda z: R.seesaw_loss_mixed(z, a, b, lam, counts), (x,), (t,))[1]
    with fwAD.dual_level():
        out = L.seesaw_loss_mixed(fwAD.make_dual(x, t), a, b, lam, counts)
        got = fwAD.unpack_dual(out).tangent
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_value_checks_under_transforms():
    """A bad label in one sample of a vmap batch is a ValueError naming the argument, as without
    the transform; so is a λ outside [0, 1] under grad."""
    x, a, b, counts, lam, w = _case()
    labels = torch.stack([a, a, torch.where(a == 4, 9, a)])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\]"):
        vmap(lambda z, y: L.seesaw_loss(z, y, counts))(torch.stack([x] * 3), labels)
    with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\]"):
        grad(lambda z: L.mixed_cross_entropy(z, a, b, lam * 3))(x)
    with pytest.raises(ValueError, match=r"index must lie in"):
        vmap(lambda u: L.mix_images(u, torch.ones(2), torch.tensor([0, 5])))(torch.randn(3, 2, 1, 2, 2))


# --------------------------------------------------------------------------- compile
def test_dynamic_compile_with_defaults_does_not_recompile_for_new_batch_sizes():
    from torch._dynamo.testing import CompileCounter
    counts = torch.rand(C) * 10

    def step(x, y, y2, lam):
        return (L.seesaw_loss(x, y, counts) + L.mixed_cross_entropy(x, y, y2, lam)
                + L.lossmix_reduce(x.sum(1), x.mean(1), lam))

    cnt = CompileCounter()
    compiled = torch.compile(step, fullgraph=True, dynamic=True, backend=cnt)
    for n in (6, 9, 13, 3):  # (never C: equal sizes would be duck-sized together on the first call)
        g = torch.Generator().manual_seed(n)
        x = torch.randn(n, C, generator=g)
        y, y2 = torch.randint(0, C, (n,), generator=g), torch.randint(0, C, (n,), generator=g)
        lam = torch.rand(n, generator=g)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        got, want = compiled(xa, y, y2, lam), step(xb, y, y2, lam)
        got.backward()
        want.backward()
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(xa.grad, xb.grad)
    assert cnt.frame_count == 1, cnt.frame_count


# --------------------------------------------------------------------------- small errors
def test_ignore_index_outside_int64_names_the_argument():
    x, a, b, *_ = _case()
    with pytest.raises(ValueError, match="ignore_index must fit in int64"):
        L.mixed_cross_entropy(x, a, b, 0.5, ignore_index=2 ** 64)


def test_count_labels_refuses_a_leaf_that_requires_grad():
    counts = torch.zeros(5, requires_grad=True)
    with pytest.raises(ValueError, match="cum_samples is a leaf tensor that requires grad"):
        L.count_labels(counts, torch.tensor([0, 1]))
    assert counts.detach().sum() == 0
    with torch.no_grad():  # as PyTorch's in-place ops, allowed without grad mode
        L.count_labels(counts, torch.tensor([0, 1]))
    assert counts.detach().sum() == 2


CHILD = r"""
import torch, torch.nn.functional as F, lossmix_ext as L
from lossmix_ext import _ops, _reference as R
assert not _ops.NATIVE_REGISTRATION
x = torch.randn(6, 4, dtype=torch.float64); a = torch.tensor([0, 1, 2, 3, 0, 1]); b = a.flip(0)
counts = torch.tensor([5., 1., 9., 2.], dtype=torch.float64); lam = torch.rand(6, dtype=torch.float64)
def second(f):
    z = x.clone().requires_grad_(True); (g,) = torch.autograd.grad(f(z), z, create_graph=True)
    (g ** 2).sum().backward(); return z.grad
for ours, ref in [(lambda z: L.mixed_cross_entropy(z, a, b, 0.3), lambda z: 0.3 * F.cross_entropy(z, a) + 0.7 * F.cross_entropy(z, b)),
                  (lambda z: L.seesaw_loss(z, a, counts), lambda z: R.seesaw_loss(z, a, counts)),
                  (lambda z: L.seesaw_loss_mixed(z, a, b, lam, counts), lambda z: R.seesaw_loss_mixed(z, a, b, lam, counts))]:
    torch.testing.assert_close(second(ours), second(ref), rtol=1e-9, atol=1e-12)
print("OK")
"""


def test_double_backward_without_the_extension():
    """The Python registration (builds without lossmix_ext._C) gives the same second order."""
    env = dict(os.environ, LOSSMIX_EXT_NO_NATIVE="1")
    p = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip().endswith("OK"), p.stdout[-2000:] + p.stderr[-3000:]
