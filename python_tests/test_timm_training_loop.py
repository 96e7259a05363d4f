"""timm's training path end to end with the plug-ins, set up with timm's public functions the
way its ``train.py`` sets them up: ``create_dataset`` on an image folder, ``create_loader``
with timm's transforms and, with the prefetcher (train.py's default), the plug-in's
``FastCollateMixup`` as ``collate_fn`` (the mixing happens in the loader's worker process);
without it, the plug-in's ``Mixup`` called on each batch. Then ``create_model``,
``SoftTargetCrossEntropy`` and two SGD steps: the batch must be mixed, the loss finite, every
parameter's gradient finite and some of them non-zero, and the step must move the weights.

A tiny synthetic ImageFolder (5 classes of 40x48 PNGs, written by the test), 32x32 crops,
timm's ``test_resnet`` with random weights: nothing is downloaded. Skipped without timm.
"""
from __future__ import annotations

import pytest
import torch


from benchmarks.frameworks import import_timm

np = pytest.importorskip("numpy", reason="the framework (and these tests) need numpy")
TIMM, TIMM_NOTE = import_timm()
pytestmark = [pytest.mark.skipif(TIMM is None, reason=f"timm: {TIMM_NOTE}"), pytest.mark.usefixtures("one_thread")]

CLASSES, PER_CLASS, BATCH = 5, 4, 8
MIXUP_ARGS = dict(mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_minmax=None, prob=1.0, switch_prob=0.5, mode="elem",
                  label_smoothing=0.1, num_classes=CLASSES)   # train.py's mixup_args for --mixup 0.8 --cutmix 1.0


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from PIL import Image
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        d = root / "train" / f"class_{c}"
        d.mkdir(parents=True)
        for k in range(PER_CLASS):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            pixels[..., c % 3] //= 2  # a little class signal
            Image.fromarray(pixels).save(d / f"{k}.png")
    return root


def _loader(root, prefetcher: bool, collate_fn=None, img_dtype=torch.float32, num_workers=0):
    from timm.data import create_dataset, create_loader
    dataset = create_dataset("", root=str(root), split="train", is_training=True, batch_size=BATCH)
    assert len(dataset) == CLASSES * PER_CLASS
    return create_loader(dataset, input_size=(3, 32, 32), batch_size=BATCH, is_training=True,
                         use_prefetcher=prefetcher, collate_fn=collate_fn, num_workers=num_workers,
                         img_dtype=img_dtype, device=torch.device("cpu"), interpolation="bilinear",
                         persistent_workers=False)


def _train_two_steps(model, batches, loss_fn, dtype=torch.float32):
    """Two steps of train.py's inner loop (forward, loss, backward, step) on (input, soft target)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for step, (x, target) in enumerate(batches):
        assert x.dtype == dtype and x.shape == (BATCH, 3, 32, 32)
        assert target.shape == (BATCH, CLASSES) and torch.allclose(target.sum(1), torch.ones(BATCH), atol=1e-5)
        out = model(x)
        loss = loss_fn(out.float(), target)
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(loss), f"step {step}: loss {loss}"
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.float().abs().sum()) for g in grads) > 0
        opt.step()
        losses.append(float(loss.detach()))
    assert len(losses) == 2
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    return losses


def _model(dtype=torch.float32):
    from timm import create_model
    torch.manual_seed(0)
    model = create_model("test_resnet", pretrained=False, num_classes=CLASSES)
    return model.to(dtype=dtype).train()


def _assert_mixed(target):
    """Soft targets other than the smoothed one-hot rows: the batch was mixed."""
    off, on = 0.1 / CLASSES, 1 - 0.1 + 0.1 / CLASSES
    plain = ((target - off).abs() < 1e-6) | ((target - on).abs() < 1e-6)
    assert not plain.all(1).all(), "no sample was mixed"


def _first_two(loader):
    batches = []
    for x, target in loader:
        batches.append((x, target))
        if len(batches) == 2:
            break
    return batches


@pytest.mark.parametrize("mode", ["elem", "pair", "batch"])
def test_prefetcher_with_fast_collate_mixup(image_folder, mode):
    """train.py's default path: the mixing runs in the loader's worker, on uint8 samples from
    timm's ToNumpy; timm's PrefetchLoader normalises the mixed uint8 batch."""
    from timm.data.loader import PrefetchLoader
    from timm.loss import SoftTargetCrossEntropy

    from lossmix_ext.integrations.timm import FastCollateMixup
    collate_fn = FastCollateMixup(**dict(MIXUP_ARGS, mode=mode))
    loader = _loader(image_folder, prefetcher=True, collate_fn=collate_fn, num_workers=1 if mode == "elem" else 0)
    assert isinstance(loader, PrefetchLoader) and loader.loader.collate_fn is collate_fn
    assert loader.mixup_enabled  # timm's loader sees the plug-in (train.py's --mixup-off-epoch switch)
    batches = _first_two(loader)
    for _, target in batches:
        _assert_mixed(target)
    _train_two_steps(_model(), batches, SoftTargetCrossEntropy())
    loader.mixup_enabled = False  # what train.py does after --mixup-off-epoch
    assert collate_fn.mixup_enabled is False
    x, target = next(iter(loader))
    off, on = 0.1 / CLASSES, 1 - 0.1 + 0.1 / CLASSES
    assert (((target - off).abs() < 1e-6) | ((target - on).abs() < 1e-6)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_without_prefetcher_with_mixup(image_folder, dtype):
    """``--no-prefetcher``: default collate, then ``input, target = mixup_fn(input, target)``
    on the batch in the model's dtype (``--model-dtype bfloat16``: through the float32 kernel)."""
    from timm.loss import SoftTargetCrossEntropy

    from lossmix_ext.integrations.timm import Mixup
    mixup_fn = Mixup(**MIXUP_ARGS)
    loader = _loader(image_folder, prefetcher=False)
    batches = []
    for x, y in _first_two(loader):
        x = x.to(dtype=dtype)
        before = x.clone()
        x, target = mixup_fn(x, y)
        assert not torch.equal(x, before)
        _assert_mixed(target)
        batches.append((x, target))
    _train_two_steps(_model(dtype), batches, SoftTargetCrossEntropy(), dtype)


def test_lossmix_form_in_the_loop(image_folder):
    """The plug-in's LossMix form in the same loop: ``x, plan = mixup_fn.mix(x)`` and
    ``mixup_fn.loss(logits, y, plan)`` (no dense soft targets), equal to SoftTargetCrossEntropy."""
    from timm.loss import SoftTargetCrossEntropy

    from lossmix_ext.integrations.timm import Mixup, mixup_target
    mixup_fn = Mixup(**MIXUP_ARGS)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in _first_two(_loader(image_folder, prefetcher=False)):
        x, plan = mixup_fn.mix(x)
        out = model(x)
        loss = mixup_fn.loss(out, y, plan)
        want = SoftTargetCrossEntropy()(out, mixup_target(y, CLASSES, plan.lam, 0.1))
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
