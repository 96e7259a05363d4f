"""``inplace_grad=True``: the gradient stored over the scores' buffer, eager mode only, and
never a silent corruption of a tensor that an upstream op saved for its backward."""
import pytest
import torch

import lossmix_ext as L
from lossmix_ext import _reference as R

BACKENDS = L.available_backends("cpu", op="seesaw_fwd_inplace")


def _head(n, k, c):
    feats = torch.randn(n, k)
    weight = torch.randn(c, k, requires_grad=True)
    return feats, weight


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("module", [False, True])
def test_inplace_grad_matches_out_of_place(backend, module):
    n, k, C = 7, 5, 6
    ct = C + 2 if module else C
    feats, weight = _head(n, k, ct)
    labels = torch.randint(0, C + 1 if module else C, (n,))
    counts = torch.rand(C + 1) * 40
    grads = []
    for inplace in (False, True):
        w = weight.detach().clone().requires_grad_(True)
        scores = feats @ w.t()  # matmul saves feats and w, not its output: safe to overwrite
        if module:
            obj, cls = L.seesaw_module_loss(scores, labels, counts, C, backend=backend, inplace_grad=inplace)
            loss = obj + 2 * cls
        else:
            loss = L.seesaw_loss_mixed(scores, labels, labels.flip(0), torch.rand(n, generator=torch.Generator().manual_seed(0)),
                                       counts[:C], backend=backend, inplace_grad=inplace)
        loss.backward()
        grads.append((float(loss.detach()), w.grad))
        if inplace:
            assert scores._version > 0  # the buffer now holds the gradient
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_grad_refuses_to_corrupt_saved_tensors(backend):
    x = torch.randn(4, 5, requires_grad=True)
    scores = x.exp()  # exp saves its output for backward
    loss = L.mixed_cross_entropy(scores, torch.tensor([0, 1, 2, 3]), torch.tensor([1, 1, 2, 0]), 0.4,
                                 backend=backend, inplace_grad=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_inplace_grad_argument_errors_and_fallbacks():
    leaf = torch.randn(4, 5, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="leaf"):
        L.seesaw_loss(leaf, labels, torch.ones(5), inplace_grad=True)
    wide = torch.randn(4, 9, requires_grad=True) * 1.0
    with pytest.raises(ValueError, match="contiguous"):
        L.seesaw_loss(wide[:, :5], labels, torch.ones(5), inplace_grad=True)
    # no gradient needed: nothing is overwritten
    x = torch.randn(4, 5)
    before = x.clone()
    got = L.seesaw_loss(x, labels, torch.ones(5), inplace_grad=True)
    torch.testing.assert_close(got, R.seesaw_loss(before, labels, torch.ones(5)))
    torch.testing.assert_close(x, before)


def test_seesaw_module_inplace_flag():
    C = 4
    m = L.SeesawLoss(num_classes=C, inplace_grad=True)
    feats, weight = _head(6, 3, C + 2)
    scores = feats @ weight.t()
    out = m(scores, torch.tensor([0, 1, 4, 2, 3, 4]))
    (out["loss_cls_objectness"] + out["loss_cls_classes"]).backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton backend not usable here")
def test_triton_inplace_looped_path():
    """C > 8192 takes the chunked kernel, which reads each chunk again before writing it."""
    n, C = 3, 9000
    base = torch.randn(n, C)
    labels = torch.tensor([0, 4500, 8999])
    counts = torch.rand(C) * 10
    outs = []
    for inplace in (False, True):
        x = base.clone().requires_grad_(True)
        scores = x * 1.0
        loss = L.seesaw_loss(scores, labels, counts, backend="triton", inplace_grad=inplace)
        loss.backward()
        outs.append((loss.detach(), x.grad))
    torch.testing.assert_close(outs[1][0], outs[0][0])
    torch.testing.assert_close(outs[1][1], outs[0][1])
