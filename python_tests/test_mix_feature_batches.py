"""``mix_images`` / ``mix_images_`` on batches that are not (B, C, H, W) images: any (B, ...)
batch without CutMix boxes or normalisation — feature vectors (B, D), one value per sample
(B,), sequences (B, T, D), video — on every backend usable on CPU tensors (torch, cpu, triton
under the interpreter), against ``lossmix_ext._reference`` (plain PyTorch, differentiated by
autograd). Bad inputs (boxes or mean / std on such batches) are in ``test_bad_inputs.py``.
"""
import pytest
import torch

import lossmix_ext as L
from lossmix_ext import _reference as R

pytestmark = pytest.mark.usefixtures("one_thread")

BACKENDS = [b for b in ("torch", "cpu", "triton") if b in L.available_backends("cpu", op="mix_images")]
SHAPES = [(7,), (7, 5), (7, 1), (7, 4, 3), (7, 2, 3, 4, 5), (7, 0)]
INDEX = [3, 0, 6, 1, 2, 5, 4]          # a random permutation of an odd batch
REPEATS = [1, 1, 4, 0, 1, 6, 6]        # repeated partners, samples nobody picks
PAIRS = [6, 5, 4, 3, 2, 1, 0]          # involutive (flip): the middle sample is its own partner


def _lam(n=7):
    lam = torch.rand(n)
    lam[0], lam[1] = 1.0, 0.0
    return lam


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_gradient_match_reference(backend, shape):
    lam = _lam()
    for index in (INDEX, REPEATS):
        index = torch.tensor(index)
        x = torch.randn(shape, requires_grad=True)
        got = L.mix_images(x, lam, index, backend=backend)
        want = R.mix_images(x, lam, index)
        assert got.shape == shape and got.dtype == x.dtype
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        up = torch.randn(shape)
        g_got, = torch.autograd.grad(got, x, up)
        g_want, = torch.autograd.grad(want, x, up)
        torch.testing.assert_close(g_got, g_want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uint8_float64_and_strided_features(backend):
    lam, index = _lam(), torch.tensor(INDEX)
    u8 = torch.randint(0, 256, (7, 6), dtype=torch.uint8)
    torch.testing.assert_close(L.mix_images(u8, lam, index, backend=backend),
                               R.mix_images(u8, lam, index, scale=1 / 255), rtol=1e-6, atol=1e-6)
    x64 = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(L.mix_images(x64, lam.double(), index, backend=backend),
                               R.mix_images(x64, lam.double(), index), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: L.mix_images(t, lam.double(), index, backend=backend), (x64,))
    base = torch.randn(7, 10)
    x = base[:, ::2]  # every other feature: not one block per sample
    got = L.mix_images(x, lam, index, backend=backend)
    torch.testing.assert_close(got, R.mix_images(x, lam, index), rtol=1e-6, atol=1e-6)
    assert got.shape == (7, 5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(7,), (7, 5), (7, 4, 3), (7, 0)], ids=str)
def test_in_place_equals_out_of_place(backend, shape):
    lam, index = _lam(), torch.tensor(PAIRS)
    x = torch.randn(shape)
    want = R.mix_images(x, lam, index)
    y = x.clone()
    assert L.mix_images_(y, lam, index, backend=backend) is y
    torch.testing.assert_close(y, want, rtol=1e-6, atol=1e-6)
    # a strided view is written through
    base = torch.randn(7, 10)
    view = base[:, ::2]
    want = R.mix_images(view, lam, index)
    L.mix_images_(view, lam, index, backend=backend)
    torch.testing.assert_close(base[:, ::2], want, rtol=1e-6, atol=1e-6)


def test_lossmix_mixes_feature_batches_and_needs_images_for_cutmix():
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    mixer = L.LossMix(alpha=1.0, generator=torch.Generator().manual_seed(0))
    mixed, plan = mixer(x)
    torch.testing.assert_close(mixed, R.mix_images(x, plan.pixel_lam, plan.index), rtol=1e-6, atol=1e-6)
    logits = torch.randn(8, 4, requires_grad=True)
    loss = plan.cross_entropy(logits, y)
    assert torch.isfinite(loss)
    inplace = L.LossMix(alpha=1.0, pairing="pairs", inplace=True, generator=torch.Generator().manual_seed(1))
    z = x.clone()
    out, plan = inplace(z)
    assert out is z
    torch.testing.assert_close(z, R.mix_images(x, plan.pixel_lam, plan.index), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="CutMix needs"):
        L.LossMix(alpha=1.0, cutmix_alpha=1.0)(x)
