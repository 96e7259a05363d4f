"""``lossmix_ext.integrations.torchvision`` inside torchvision's own Faster / Mask R-CNN.

Golden values come from torchvision's own ``model(images, targets)`` calls (with the other
target set, per image, or on the samples the plug-in drew, replayed into the model's own
samplers), from the formulas (mmdetection's ``get_activation``, ``NormedLinear``), and from
the project's independent NumPy oracle for the Seesaw loss (``oracle.seesaw_module``), never
from the code under test. Most tests use a tiny detector built from torchvision's public
classes (a two-conv backbone without batch norm, one feature map, 64×64 images, samplers that
take every anchor and proposal, so the losses are deterministic); one uses the real
``fasterrcnn_mobilenet_v3_large_320_fpn``.

torchvision's detection models need its compiled ops (``nms``, ``roi_align``): without
torchvision, or with a build whose ops do not load next to the installed torch (PyPI's CUDA
torchvision next to the CPU torch of the main CI job), those tests skip with the reason; the
ones that need no torchvision (``NormedLinear`` / ``NormedConv2d`` against the formulas and,
when importable, mmdetection's own classes; the lazy import) run everywhere.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import io
import os
import subprocess
import sys

import pytest
import torch

np = pytest.importorskip("numpy", reason="the NumPy oracle (and torchvision itself) need numpy")
import torch.nn.functional as F
from torch import nn

import lossmix_ext as L
from lossmix_ext.integrations.normed import NormedConv2d, NormedLinear

from benchmarks.frameworks import package_without_init, torchvision_detection_status

import oracle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TV_STATUS = torchvision_detection_status()
needs_tv = pytest.mark.skipif(TV_STATUS != "ok", reason=f"torchvision detection models cannot run: {TV_STATUS}")

pytestmark = pytest.mark.usefixtures("one_thread")

C = 4          # foreground classes
B = 3          # images per batch
SIZE = 64      # image side
F32_EPS = float(np.finfo(np.float32).eps)
TERMS = ("loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


# --------------------------------------------------------------------------- without torchvision
def _mmdet_normed():
    """mmdetection's own ``normed_predictor`` module, or None (loaded without running
    ``mmdet.models``' ``__init__``, which needs mmcv's compiled ops)."""
    try:
        importlib.import_module("mmdet.registry")
    except Exception:  # noqa: BLE001 (not installed or not importable: compare with the formulas only)
        return None
    name = "mmdet.models.layers.normed_predictor"
    if name in sys.modules:
        return sys.modules[name]
    for pkg in ("mmdet.models", "mmdet.models.layers"):  # the real packages, else package objects
        if pkg not in sys.modules:
            try:
                importlib.import_module(pkg)
            except Exception:  # noqa: BLE001 (mmcv-lite: no compiled ops)
                package_without_init(pkg)
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001
        return None


def _normed_linear_formula(x, w, b, t, power, eps):
    xn = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) ** power + eps)
    wn = w / (torch.linalg.vector_norm(w, dim=1, keepdim=True) ** power + eps)
    return t * xn @ wn.T + b


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_normed_linear_formula_and_mmdetection(power):
    torch.manual_seed(0)
    layer = NormedLinear(6, 5, temperature=20, power=power)
    assert layer.weight.std() < 0.02 and torch.all(layer.bias == 0)  # mmdetection's initialisation
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(7, 6, dtype=torch.float64)
    got = layer.double()(x)
    want = _normed_linear_formula(x, layer.weight, layer.bias, 20.0, power, 1e-6)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    mm = _mmdet_normed()
    if mm is not None:
        ref = mm.NormedLinear(6, 5, tempearture=20, power=power).double()
        ref.load_state_dict(layer.state_dict())
        assert torch.equal(ref(x), got)


@pytest.mark.parametrize("over_kernel", [False, True])
def test_normed_conv2d_formula_and_mmdetection(over_kernel):
    torch.manual_seed(0)
    layer = NormedConv2d(4, 3, 3, padding=1, norm_over_kernel=over_kernel, tempearture=10).double()
    assert layer.temperature == 10 and layer.tempearture == 10
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    w = layer.weight
    if over_kernel:
        wn = w / (w.reshape(3, -1).norm(dim=1).reshape(3, 1, 1, 1) + 1e-6)
    else:
        wn = w / (w.norm(dim=1, keepdim=True) + 1e-6)
    xn = 10 * x / (x.norm(dim=1, keepdim=True) + 1e-6)
    torch.testing.assert_close(layer(x), F.conv2d(xn, wn, layer.bias, padding=1), rtol=1e-12, atol=1e-12)
    mm = _mmdet_normed()
    if mm is not None:
        ref = mm.NormedConv2d(4, 3, 3, padding=1, norm_over_kernel=over_kernel, tempearture=10).double()
        ref.load_state_dict(layer.state_dict())
        assert torch.equal(ref(x), layer(x))


def test_normed_layers_reject_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        NormedLinear(3, 2, temperature=0)
    with pytest.raises(TypeError, match="power"):
        NormedLinear(3, 2, power="1")
    with pytest.raises(ValueError, match="eps"):
        NormedConv2d(3, 2, 1, eps=-1.0)
    with pytest.raises(TypeError, match="norm_over_kernel"):
        NormedConv2d(3, 2, 1, norm_over_kernel=1)


def test_import_is_lazy():
    """``import lossmix_ext`` (and its integrations package, and the normed layers) never imports torchvision."""
    code = ("import sys, lossmix_ext, lossmix_ext.integrations, lossmix_ext.integrations.normed; "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(TV_STATUS == "ok", reason="torchvision's detection ops work here: nothing to refuse")
def test_plugin_says_why_it_cannot_import():
    code = ("import lossmix_ext.integrations.torchvision")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode != 0
    assert "ImportError" in out.stderr and "torchvision" in out.stderr.splitlines()[-1]


# --------------------------------------------------------------------------- models and data
def _tv():
    import torchvision  # noqa: F401
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign
    return dict(FasterRCNN=FasterRCNN, MaskRCNN=MaskRCNN, AnchorGenerator=AnchorGenerator,
                FastRCNNPredictor=FastRCNNPredictor, TwoMLPHead=TwoMLPHead, MaskRCNNHeads=MaskRCNNHeads,
                MaskRCNNPredictor=MaskRCNNPredictor, MultiScaleRoIAlign=MultiScaleRoIAlign)


@pytest.fixture(scope="module")
def P():
    """The plug-in module (imported only where torchvision's detection models run)."""
    return importlib.import_module("lossmix_ext.integrations.torchvision")


def tiny(mask=False, take_all=True, bn=False, seed=0, **extra):
    """A tiny Faster / Mask R-CNN from torchvision's public classes: two convs (stride 4, 16
    channels, no batch norm unless ``bn``), one feature map, 9 anchors a position, 64×64 input.
    ``take_all``: both samplers take every anchor / proposal (deterministic losses)."""
    tv = _tv()
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1)]
    if bn:
        layers.append(nn.BatchNorm2d(16))
    backbone = nn.Sequential(*layers, nn.ReLU())
    backbone.out_channels = 16
    kw = dict(min_size=SIZE, max_size=SIZE,
              rpn_anchor_generator=tv["AnchorGenerator"](((8, 16, 32),), ((0.5, 1.0, 2.0),)),
              box_roi_pool=tv["MultiScaleRoIAlign"](["0"], 7, 2), box_head=tv["TwoMLPHead"](16 * 49, 32),
              box_predictor=tv["FastRCNNPredictor"](32, C + 1), rpn_pre_nms_top_n_train=200,
              rpn_post_nms_top_n_train=40)
    if take_all:
        kw.update(rpn_batch_size_per_image=10 ** 6, box_batch_size_per_image=10 ** 6)
    else:  # torchvision's random subsampling really subsamples
        kw.update(rpn_batch_size_per_image=64, box_batch_size_per_image=16)
    kw.update(extra)
    if mask:
        model = tv["MaskRCNN"](backbone, None, mask_roi_pool=tv["MultiScaleRoIAlign"](["0"], 14, 2),
                               mask_head=tv["MaskRCNNHeads"](16, (8,), 1),
                               mask_predictor=tv["MaskRCNNPredictor"](8, 8, C + 1), **kw)
    else:
        model = tv["FasterRCNN"](backbone, None, **kw)
    return model.train()


def batch(mask=False, seed=1, n=B, sizes=None, empty=()):
    """``n`` images in [0, 1] and torchvision targets (1–3 boxes, labels 1..C; ``empty``: images
    without boxes; masks = the boxes' rectangles)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for b in range(n):
        h, w = sizes[b] if sizes else (SIZE, SIZE)
        images.append(torch.rand(3, h, w, generator=g))
        k = 0 if b in empty else 1 + b % 3
        xy = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 8 + torch.rand(k, 2, generator=g) * 16
        boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w - 1.0, h - 1.0]))], 1)
        t = dict(boxes=boxes, labels=torch.randint(1, C + 1, (k,), generator=g), iscrowd=torch.zeros(k, dtype=torch.int64))
        if mask:
            m = torch.zeros(k, h, w, dtype=torch.uint8)
            for i, bx in enumerate(boxes.long()):
                m[i, bx[1]:bx[3], bx[0]:bx[2]] = 1
            t["masks"] = m
        targets.append(t)
    return images, targets


def partner_targets(targets, index):
    return [targets[j] for j in index.tolist()]


def close(got, want, rtol=2e-5, atol=1e-7):
    assert set(got) == set(want), (sorted(got), sorted(want))
    for k in want:
        torch.testing.assert_close(got[k], want[k].to(got[k].dtype), rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")


class Recorder:
    """Wraps a model's ``fg_bg_sampler``: records every call (its labels and its sample)."""

    def __init__(self, sampler):
        self.sampler, self.calls = sampler, []

    def __call__(self, labels):
        out = self.sampler(labels)
        self.calls.append(([lab.clone() for lab in labels], out))
        return out


class Replayer:
    """Returns a recorded sample (checking that the labels it was drawn for are these)."""

    def __init__(self, call):
        self.labels, self.out = call

    def __call__(self, labels):
        assert len(labels) == len(self.labels) and all(torch.equal(a, b) for a, b in zip(labels, self.labels))
        return self.out


def record(model):
    rpn, roi = Recorder(model.rpn.fg_bg_sampler), Recorder(model.roi_heads.fg_bg_sampler)
    model.rpn.fg_bg_sampler, model.roi_heads.fg_bg_sampler = rpn, roi
    return rpn, roi


def unrecord(model, rpn, roi):
    model.rpn.fg_bg_sampler, model.roi_heads.fg_bg_sampler = rpn.sampler, roi.sampler


# --------------------------------------------------------------------------- the contract, plain models
@needs_tv
@pytest.mark.parametrize("mask", [False, True], ids=["faster", "mask"])
def test_lambda_one_identity_index_is_the_model(P, mask):
    model = tiny(mask)
    images, targets = batch(mask)
    want = model(images, targets)
    got = P.lossmix_detection_losses(model, images, targets, torch.arange(B), 1.0)
    assert list(got) == list(want)  # same keys, same order
    close(got, want, rtol=0, atol=0)  # a number λ of 1 runs torchvision's own expressions (times 1)


@needs_tv
def test_lambda_one_random_samplers_same_rng_state(P):
    """With torchvision's random subsampling, λ = 1 draws the samples ``model()`` draws from the same RNG state."""
    model = tiny(take_all=False)
    images, targets = batch()
    torch.manual_seed(5)
    want = model(images, targets)
    torch.manual_seed(5)
    got = P.lossmix_detection_losses(model, images, targets, torch.tensor([2, 0, 1]), 1.0)
    close(got, want, rtol=0, atol=0)
    torch.manual_seed(5)
    got0 = P.lossmix_detection_losses(model, images, partner_targets(targets, torch.tensor([1, 2, 0])),
                                      torch.tensor([2, 0, 1]), 0.0)  # λ = 0: only the partners' set
    close(got0, want, rtol=0, atol=0)


@needs_tv
@pytest.mark.parametrize("lam", [0.3, 0.0])
@pytest.mark.parametrize("mask", [False, True], ids=["faster", "mask"])
def test_number_lambda_interpolates_the_model(P, mask, lam):
    model = tiny(mask)
    # Faster R-CNN: images of different sizes (a mixed image keeps its own size); Mask R-CNN:
    # one size, so every partner's masks fit the image they supervise
    images, targets = batch(mask, sizes=None if mask else [(64, 64), (48, 64), (64, 40)])
    index = torch.tensor([2, 0, 1])
    want_a, want_b = model(images, targets), model(images, partner_targets(targets, index))
    got = P.lossmix_detection_losses(model, images, targets, index, lam)
    close(got, {k: lam * want_a[k] + (1 - lam) * want_b[k] for k in want_a})


@needs_tv
def test_mask_lambda_one_reads_only_its_own_masks(P):
    """Images of different sizes: a number λ of 1 uses only each image's own masks, so the
    partners' need not fit; any other λ needs them to."""
    model = tiny(True)
    images, targets = batch(True, sizes=[(64, 64), (48, 64), (64, 40)])
    index = torch.tensor([2, 0, 1])
    close(P.lossmix_detection_losses(model, images, targets, index, 1.0), model(images, targets), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"targets\[2\]\['masks'\] must be the size of images\[0\]"):
        P.lossmix_detection_losses(model, images, targets, index, 0.5)


@needs_tv
@pytest.mark.parametrize("mask", [False, True], ids=["faster", "mask"])
def test_number_lambda_on_the_samples_it_drew(P, mask):
    """torchvision's random samplers: the plug-in's samples, replayed into the model's own
    samplers, give λ·model(targets) + (1−λ)·model(targets[index])."""
    model = tiny(mask, take_all=False)
    images, targets = batch(mask, seed=3)
    index, lam = torch.tensor([1, 2, 0]), 0.7
    if mask:
        index = torch.tensor([0, 2, 1])
    rpn, roi = record(model)
    got = P.lossmix_detection_losses(model, images, targets, index, lam)
    unrecord(model, rpn, roi)
    assert len(rpn.calls) == len(roi.calls) == 2  # one sample per target set, set a first
    want = []
    for s, tg in enumerate((targets, partner_targets(targets, index))):
        model.rpn.fg_bg_sampler, model.roi_heads.fg_bg_sampler = Replayer(rpn.calls[s]), Replayer(roi.calls[s])
        want.append(model(images, tg))
    unrecord(model, rpn, roi)
    close(got, {k: lam * want[0][k] + (1 - lam) * want[1][k] for k in want[0]})


def per_image_golden(model, images, sets):
    """Σ over sets, images: w_i · (image i's sum of sampled terms) / (the batch's normaliser),
    from torchvision's own calls: one batched call per set (recording the samplers' per-image
    counts) and one call per image (whose loss × its own count is that image's sum)."""
    total = {}
    for targets, w in sets:
        rpn, roi = record(model)
        keys = list(model(images, targets))
        unrecord(model, rpn, roi)
        (_, (rp, rn)), (_, (bp, bn)) = rpn.calls[0], roi.calls[0]
        n_rpn = [int(p.sum() + q.sum()) for p, q in zip(rp, rn)]
        n_roi = [int(p.sum() + q.sum()) for p, q in zip(bp, bn)]
        n_pos = [int(p.sum()) for p in bp]
        count = {"loss_objectness": n_rpn, "loss_rpn_box_reg": n_rpn, "loss_classifier": n_roi,
                 "loss_box_reg": n_roi, "loss_mask": n_pos}
        for i in range(len(images)):
            single = model([images[i]], [targets[i]])
            for k in keys:
                part = w[i] * single[k].double() * count[k][i] / sum(count[k])
                total[k] = total.get(k, 0) + part
    return total


@needs_tv
@pytest.mark.parametrize("mask", [False, True], ids=["faster", "mask"])
def test_per_image_lambda_weights_rows_within_torchvisions_normaliser(P, mask):
    model = tiny(mask)
    images, targets = batch(mask, seed=4, empty=(1,))
    index = torch.tensor([2, 0, 1]) if not mask else torch.tensor([2, 1, 0])
    lam = torch.tensor([0.9, 0.25, 0.6])
    got = P.lossmix_detection_losses(model, images, targets, index, lam)
    want = per_image_golden(model, images, [(targets, lam.double()), (partner_targets(targets, index),
                                                                       1 - lam.double())])
    close(got, {k: v.float() for k, v in want.items()}, rtol=1e-5, atol=1e-7)
    # a (B,) λ of equal values is the number λ
    same = P.lossmix_detection_losses(model, images, targets, index, torch.full((B,), 0.4))
    close(same, P.lossmix_detection_losses(model, images, targets, index, 0.4), rtol=1e-6, atol=1e-8)


@needs_tv
def test_mobilenet_v3_fpn_detector(P):
    """The real detector the issue names: number λ equals the interpolation of two model calls,
    a (B,) λ backpropagates with finite gradients."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn
    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=C + 1,
                                                  min_size=96, max_size=96, rpn_batch_size_per_image=10 ** 6,
                                                  box_batch_size_per_image=10 ** 6, rpn_post_nms_top_n_train=100)
    model.train()
    images, targets = batch(n=2, seed=6)
    index = torch.tensor([1, 0])
    want_a, want_b = model(images, targets), model(images, partner_targets(targets, index))
    got = P.lossmix_detection_losses(model, images, targets, index, 0.35)
    close(got, {k: 0.35 * want_a[k] + 0.65 * want_b[k] for k in want_a}, rtol=1e-5, atol=1e-6)
    losses = P.lossmix_detection_losses(model, images, targets, index, torch.tensor([0.2, 0.9]))
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) > 50 and all(torch.isfinite(g).all() for g in grads)


@needs_tv
@pytest.mark.parametrize("kind", ["faster", "seesaw", "mask-seesaw"])
def test_finite_gradients(P, kind):
    model = tiny(kind.startswith("mask"))
    if "seesaw" in kind:
        P.seesaw_fast_rcnn(model, normed_mask=kind.startswith("mask"))
    images, targets = batch(kind.startswith("mask"))
    lam = torch.tensor([0.2, 0.5, 1.0])
    losses = P.lossmix_detection_losses(model, images, targets, torch.tensor([1, 0, 2]), lam)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    named = dict(model.named_parameters())
    for name, p in named.items():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert named["roi_heads.box_predictor.cls_score.weight"].grad.abs().sum() > 0
    assert named["backbone.0.weight"].grad.abs().sum() > 0


@needs_tv
def test_torchvision_internals_it_relies_on(P):
    """The internals the plug-in calls exist with the signatures it uses (a torchvision upgrade
    that changes them fails here by name)."""
    from torchvision.models.detection import rpn as tv_rpn
    model = tiny(True)
    sig = lambda f: list(inspect.signature(f).parameters)  # noqa: E731
    assert sig(model.roi_heads.select_training_samples) == ["proposals", "targets"]
    assert sig(model.rpn.assign_targets_to_anchors) == ["anchors", "targets"]
    assert sig(model.rpn.filter_proposals) == ["proposals", "objectness", "image_shapes", "num_anchors_per_level"]
    assert sig(tv_rpn.concat_box_prediction_layers) == ["box_cls", "box_regression"]
    for obj, names in ((model.rpn, ("head", "anchor_generator", "box_coder", "fg_bg_sampler")),
                       (model.roi_heads, ("box_roi_pool", "box_head", "box_predictor", "mask_roi_pool", "mask_head",
                                          "mask_predictor", "fg_bg_sampler", "has_mask", "has_keypoint")),
                       (model, ("transform", "backbone", "rpn", "roi_heads"))):
        for name in names:
            assert hasattr(obj, name), name
    assert sig(model.rpn.box_coder.encode) == ["reference_boxes", "proposals"]
    assert sig(model.rpn.box_coder.decode) == ["rel_codes", "boxes"]


# --------------------------------------------------------------------------- Seesaw
def _seesaw_golden(model, images, sets, prior, p=0.8, q=2.0, eps=1e-2):
    """The Seesaw terms from the oracle: rows and labels from torchvision's own
    ``select_training_samples`` on the inputs ``model.roi_heads`` receives in ``model()``
    (captured by a pre-hook, on a copy), logits from the model's layers, counts = prior + both
    sets' labels, each set with weights w_i / (R + eps), summed."""
    roi = model.roi_heads
    captured = []
    for targets, _ in sets:  # on a copy: its counts change, the model's do not
        twin = copy.deepcopy(model)
        hook = twin.roi_heads.register_forward_pre_hook(lambda mod, args: captured.append(args))
        twin(images, targets)
        hook.remove()
    rows = []
    for (features, proposals, shapes, targets), (_, w) in zip(captured, sets):
        props, _, labels, _ = roi.select_training_samples(proposals, targets)
        with torch.no_grad():
            x = roi.box_head(roi.box_roi_pool(features, props, shapes)).flatten(1)
            logits = roi.box_predictor.cls_score(x)
        lab = torch.cat(labels)
        mm = torch.where(lab == 0, torch.full_like(lab, C), lab - 1)
        wr = torch.cat([torch.full((len(li),), float(w[i])) for i, li in enumerate(labels)])
        rows.append((logits.double().numpy(), mm.numpy(), wr.double().numpy()))
    hists = [np.bincount(mm, minlength=C + 1).astype(np.float64) for _, mm, _ in rows]
    obj = cls = 0.0
    for s, (logits, mm, wr) in enumerate(rows):
        before = prior + sum(h for t, h in enumerate(hists) if t != s)  # the oracle adds this set's labels itself
        o, c, _ = oracle.seesaw_module(logits, mm, before, C, p, q, eps, label_weights=wr, reduction="mean",
                                       avg_factor=len(mm))
        obj, cls = obj + o, cls + c
    return obj, cls, prior + sum(hists)


def _prior(model):
    counts = model.roi_heads.box_predictor.loss_cls.cum_samples
    counts.copy_(torch.tensor([5.0, 40.0, 0.0, 12.0, 300.0]))
    return counts.double().numpy().copy()


@needs_tv
@pytest.mark.parametrize("lam", ["number", "per-image", "one"])
def test_seesaw_classifier_against_the_oracle(P, lam):
    model = P.seesaw_fast_rcnn(tiny())
    prior = _prior(model)
    images, targets = batch(seed=7)
    index = torch.tensor([1, 2, 0])
    lam_arg = {"number": 0.3, "per-image": torch.tensor([0.1, 0.5, 0.8]), "one": 1.0}[lam]
    w = lam_arg if isinstance(lam_arg, torch.Tensor) else torch.full((B,), float(lam_arg))
    sets = [(targets, w), (partner_targets(targets, index), 1 - w)]
    if lam == "one":
        sets = sets[:1]  # a number λ of 1 computes (and counts) the first set only
    obj, cls, counts = _seesaw_golden(model, images, sets, prior)
    got = P.lossmix_detection_losses(model, images, targets, index, lam_arg)
    assert list(got)[:2] == ["loss_cls_objectness", "loss_cls_classes"] and "loss_classifier" not in got
    torch.testing.assert_close(got["loss_cls_objectness"].double(), torch.tensor(obj, dtype=torch.float64),
                               rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got["loss_cls_classes"].double(), torch.tensor(cls, dtype=torch.float64),
                               rtol=1e-5, atol=1e-7)
    assert np.array_equal(model.roi_heads.box_predictor.loss_cls.cum_samples.double().numpy(), counts)


@needs_tv
@pytest.mark.parametrize("mask", [False, True], ids=["faster", "mask"])
def test_seesaw_other_terms_are_torchvisions(P, mask):
    """Box regression, RPN (and mask) terms of a converted model are those of the plain model
    with the same weights (torchvision's own calls), for the model's own forward and the plug-in."""
    plain = tiny(mask)
    model = P.seesaw_fast_rcnn(copy.deepcopy(plain), normed_mask=False)
    images, targets = batch(mask, seed=8)
    index = torch.tensor([2, 0, 1]) if not mask else torch.tensor([0, 1, 2])
    keys = TERMS + (("loss_mask",) if mask else ())
    want_a, want_b = plain(images, targets), plain(images, partner_targets(targets, index))
    own = model(images, targets)
    assert set(own) == set(keys) | {"loss_cls_objectness", "loss_cls_classes"}
    close({k: own[k] for k in keys}, {k: want_a[k] for k in keys}, rtol=0, atol=0)
    got = P.lossmix_detection_losses(model, images, targets, index, 0.6)
    close({k: got[k] for k in keys}, {k: 0.6 * want_a[k] + 0.4 * want_b[k] for k in keys})


@needs_tv
def test_seesaw_model_forward_is_the_plugin_at_lambda_one(P):
    model = P.seesaw_fast_rcnn(tiny(True), normed_mask=True)
    images, targets = batch(True, seed=9)
    twin = copy.deepcopy(model)
    want = model(images, targets)
    got = P.lossmix_detection_losses(twin, images, targets, torch.arange(B), 1.0)
    close(got, want, rtol=0, atol=0)
    assert torch.equal(model.roi_heads.box_predictor.loss_cls.cum_samples,
                       twin.roi_heads.box_predictor.loss_cls.cum_samples)


@needs_tv
def test_seesaw_layout(P):
    plain = tiny(True)
    old_reg = plain.roi_heads.box_predictor.bbox_pred
    old_mask = plain.roi_heads.mask_predictor.mask_fcn_logits.weight.detach().clone()
    model = P.seesaw_fast_rcnn(plain, p=0.5, q=1.0, normed_mask=True, temperature=15.0)
    assert model is plain
    roi = model.roi_heads
    pred = roi.box_predictor
    assert isinstance(roi, P.SeesawRoIHeads) and type(roi).__mro__[2].__name__ == "RoIHeads"
    assert isinstance(pred.cls_score, NormedLinear) and pred.cls_score.out_features == C + 2
    assert pred.cls_score.temperature == 15.0 and pred.cls_score.power == 1.0 and pred.cls_score.eps == 1e-6
    assert pred.bbox_pred is old_reg and pred.bbox_pred.out_features == 4 * (C + 1)
    assert pred.loss_cls.p == 0.5 and pred.loss_cls.q == 1.0 and pred.loss_cls.num_classes == C
    conv = roi.mask_predictor.mask_fcn_logits
    assert isinstance(conv, NormedConv2d) and torch.equal(conv.weight, old_mask) and conv.temperature == 15.0
    sd = model.state_dict()
    assert sd["roi_heads.box_predictor.loss_cls.cum_samples"].shape == (C + 1,)
    assert sd["roi_heads.box_predictor.loss_cls.cum_samples"].dtype == torch.float32
    assert sd["roi_heads.box_predictor.cls_score.weight"].shape == (C + 2, 32)
    linear = P.seesaw_fast_rcnn(tiny(), normed=False, sync_counts=True).roi_heads.box_predictor
    assert type(linear.cls_score) is nn.Linear and linear.cls_score.weight.std() < 0.02
    assert linear.loss_cls.sync_counts is True


@needs_tv
def test_seesaw_sync_counts_without_a_process_group(P):
    a = P.seesaw_fast_rcnn(tiny(seed=2), sync_counts=True)
    b = P.seesaw_fast_rcnn(tiny(seed=2), sync_counts=False)
    b.load_state_dict(a.state_dict())
    images, targets = batch(seed=2)
    lam = torch.tensor([0.3, 0.6, 0.9])
    close(P.lossmix_detection_losses(a, images, targets, torch.tensor([2, 1, 0]), lam),
          P.lossmix_detection_losses(b, images, targets, torch.tensor([2, 1, 0]), lam), rtol=0, atol=0)


@needs_tv
@pytest.mark.parametrize("mask", [False, True], ids=["faster", "mask"])
def test_seesaw_eval_outputs(P, mask):
    model = P.seesaw_fast_rcnn(tiny(mask, box_score_thresh=0.0), normed_mask=mask)
    images, targets = batch(mask)
    model.eval()
    pred = model.roi_heads.box_predictor
    x = torch.randn(6, 32)
    with torch.no_grad():
        log_scores, deltas = pred(x)
        raw = pred.cls_score(x)
    cls, obj = raw[:, :C].softmax(-1), raw[:, C:].softmax(-1)  # mmdetection's get_activation, torchvision's order
    want = torch.cat([obj[:, 1:], cls * obj[:, :1]], dim=1)
    torch.testing.assert_close(log_scores.softmax(-1), want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(pred.scores(raw), want, rtol=1e-6, atol=1e-7)
    assert log_scores.shape == (6, C + 1) and deltas.shape == (6, 4 * (C + 1))
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == B
    for d in detections:
        assert d["labels"].numel() > 0
        assert d["labels"].min() >= 1 and d["labels"].max() <= C
        assert d["scores"].min() >= 0 and d["scores"].max() <= 1
        if mask:
            assert d["masks"].shape[1:] == (1, SIZE, SIZE) and 0 <= d["masks"].min() and d["masks"].max() <= 1


@needs_tv
def test_seesaw_state_dict_round_trip(P):
    model = P.seesaw_fast_rcnn(tiny(True, seed=0), normed_mask=True)
    images, targets = batch(True, seed=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(2):
        opt.zero_grad()
        sum(P.lossmix_detection_losses(model, images, targets, torch.tensor([0, 1, 2]),
                                       torch.tensor([0.5, 0.7, 0.9])).values()).backward()
        opt.step()
    counts = model.roi_heads.box_predictor.loss_cls.cum_samples.clone()
    assert counts.sum() > 0
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = P.seesaw_fast_rcnn(tiny(True, seed=1), normed_mask=True)
    fresh.load_state_dict(torch.load(buf))
    for (k, v), (k2, v2) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    twin = copy.deepcopy(model)
    close(P.lossmix_detection_losses(fresh, images, targets, torch.tensor([2, 0, 1]), 0.4),
          P.lossmix_detection_losses(twin, images, targets, torch.tensor([2, 0, 1]), 0.4), rtol=0, atol=0)
    fresh.eval(), twin.eval()
    with torch.no_grad():
        a, b = fresh(images), twin(images)
    for x, y in zip(a, b):
        for k in x:
            assert torch.equal(x[k], y[k]), k
    half = copy.deepcopy(model).half()  # the counts stay float32 (a float16 count stops at 2048)
    assert half.roi_heads.box_predictor.loss_cls.cum_samples.dtype == torch.float32


@needs_tv
def test_seesaw_custom_roi_heads_subclass(P):
    from torchvision.models.detection.roi_heads import RoIHeads

    class MyHeads(RoIHeads):
        pass

    model = tiny()
    model.roi_heads.__class__ = MyHeads
    P.seesaw_fast_rcnn(model)
    assert isinstance(model.roi_heads, MyHeads) and isinstance(model.roi_heads, P._SeesawRoIHeadsMixin)
    assert type(model.roi_heads).__name__ == "SeesawMyHeads"
    images, targets = batch()
    assert "loss_cls_classes" in model(images, targets)


# --------------------------------------------------------------------------- bad input
def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


BAD = {
    "eval mode": (lambda m, a: (m.eval(), a)[1], ValueError, "train mode"),
    "not a detector": (lambda m, a: a | {"model": nn.Linear(2, 2)}, TypeError, "model"),
    "wrapped detector": (lambda m, a: a | {"model": nn.DataParallel(m)}, TypeError, "wrapping a FasterRCNN"),
    "images int": (lambda m, a: a | {"images": [im.mul(255).byte() for im in a["images"]]}, TypeError, "images[0]"),
    "images 2-D": (lambda m, a: a | {"images": [a["images"][0][0]] + a["images"][1:]}, ValueError, "images[0]"),
    "targets short": (lambda m, a: a | {"targets": a["targets"][:2]}, ValueError, "targets"),
    "labels int32": (lambda m, a: a | {"targets": _edit(a, 1, labels=a["targets"][1]["labels"].int())},
                     TypeError, "targets[1]['labels']"),
    "labels > C": (lambda m, a: a | {"targets": _edit(a, 2, labels=a["targets"][2]["labels"] + C)},
                   ValueError, "targets[2]['labels']"),
    "labels < 0": (lambda m, a: a | {"targets": _edit(a, 0, labels=a["targets"][0]["labels"] - 9)},
                   ValueError, "targets[0]['labels']"),
    "no labels": (lambda m, a: a | {"targets": [a["targets"][0], {"boxes": a["targets"][1]["boxes"]},
                                                a["targets"][2]]}, ValueError, "targets[1]"),
    "degenerate box": (lambda m, a: a | {"targets": _edit(a, 1, boxes=a["targets"][1]["boxes"][:, [2, 1, 0, 3]])},
                       ValueError, "targets[1]['boxes']"),
    "index shape": (lambda m, a: a | {"index": torch.arange(B + 1)}, ValueError, "index"),
    "index dtype": (lambda m, a: a | {"index": torch.arange(B).float()}, TypeError, "index"),
    "index range": (lambda m, a: a | {"index": torch.tensor([0, 1, B])}, ValueError, "index"),
    "index type": (lambda m, a: a | {"index": "012"}, TypeError, "index"),
    "lam > 1": (lambda m, a: a | {"lam": 1.5}, ValueError, "lam"),
    "lam tensor < 0": (lambda m, a: a | {"lam": torch.tensor([0.5, -0.1, 0.2])}, ValueError, "lam"),
    "lam nan": (lambda m, a: a | {"lam": torch.tensor([0.5, float("nan"), 0.2])}, ValueError, "lam"),
    "lam shape": (lambda m, a: a | {"lam": torch.rand(B + 1)}, ValueError, "lam"),
    "lam int tensor": (lambda m, a: a | {"lam": torch.ones(B, dtype=torch.int64)}, TypeError, "lam"),
    "lam str": (lambda m, a: a | {"lam": "0.5"}, TypeError, "lam"),
}
BAD_MASK = {
    "masks missing": (lambda m, a: a | {"targets": [{k: v for k, v in t.items() if k != "masks"} for t in a["targets"]]},
                      ValueError, "masks"),
    "masks size": (lambda m, a: a | {"targets": _edit(a, 2, masks=a["targets"][2]["masks"][:, :40])},
                   ValueError, "targets[2]['masks']"),
    "partner masks size": (lambda m, a: a | {"images": [a["images"][0][:, :, :50]] + a["images"][1:],
                                             "targets": _edit(a, 0, masks=a["targets"][0]["masks"][:, :, :50])},
                           ValueError, "targets[1]['masks']"),
}


def _edit(args, i, **changes):
    targets = list(args["targets"])
    targets[i] = {**targets[i], **changes}
    return targets


@needs_tv
@pytest.mark.parametrize("case", list(BAD) + list(BAD_MASK))
def test_bad_input_raises_before_any_state_changes(P, case):
    mask = case in BAD_MASK
    model = P.seesaw_fast_rcnn(tiny(mask, bn=True))
    _prior(model)
    images, targets = batch(mask)
    args = dict(model=model, images=images, targets=targets, index=torch.tensor([1, 2, 0]),
                lam=torch.tensor([0.3, 0.5, 0.7]))
    if mask:
        args["index"] = torch.tensor([1, 0, 2])
    make, exc, name = (BAD_MASK if mask else BAD)[case]
    args = make(model, args)
    before = _snapshot(model)
    rng = torch.get_rng_state()
    with pytest.raises(exc) as info:
        P.lossmix_detection_losses(**args)
    assert name in str(info.value), str(info.value)
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k  # counts, batch-norm statistics, weights
    assert torch.equal(torch.get_rng_state(), rng)


@needs_tv
def test_one_stage_and_keypoint_models_are_refused(P):
    from torchvision.models.detection import KeypointRCNN, RetinaNet
    tv = _tv()
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1))
    backbone.out_channels = 8
    retina = RetinaNet(backbone, C + 1, anchor_generator=tv["AnchorGenerator"](((16,),), ((1.0,),)))
    with pytest.raises(TypeError, match="RetinaNet"):
        P.lossmix_detection_losses(retina.train(), *batch()[:2], torch.arange(B), 0.5)
    with pytest.raises(TypeError, match="RetinaNet"):
        P.seesaw_fast_rcnn(retina)
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
    keypoint = KeypointRCNN(backbone, C + 1, rpn_anchor_generator=tv["AnchorGenerator"](((16,),), ((1.0,),)),
                            box_roi_pool=tv["MultiScaleRoIAlign"](["0"], 7, 2),
                            keypoint_roi_pool=tv["MultiScaleRoIAlign"](["0"], 14, 2),
                            keypoint_head=KeypointRCNNHeads(8, (8,)), keypoint_predictor=KeypointRCNNPredictor(8, 17))
    with pytest.raises(ValueError, match="keypoint"):
        P.lossmix_detection_losses(keypoint.train(), *batch()[:2], torch.arange(B), 0.5)


@needs_tv
def test_seesaw_fast_rcnn_checks_before_it_changes_the_model(P):
    with pytest.raises(TypeError, match="model"):
        P.seesaw_fast_rcnn(nn.Linear(2, 2))
    model = tiny()
    before = _snapshot(model)
    for kwargs, exc, name in (({"p": "x"}, ValueError, "p must"), ({"q": float("nan")}, ValueError, "q must"),
                              ({"eps": 0.0}, ValueError, "eps"), ({"temperature": 0}, ValueError, "temperature"),
                              ({"power": -1.0}, ValueError, "power"), ({"loss_weight": None}, TypeError, "loss_weight"),
                              ({"normed": 1}, TypeError, "normed"), ({"normed_mask": True}, ValueError, "mask"),
                              ({"sync_counts": 1}, TypeError, "sync_counts"), ({"backend": "nope"}, ValueError, "backend")):
        with pytest.raises(exc, match=name):
            P.seesaw_fast_rcnn(model, **kwargs)
        assert type(model.roi_heads).__name__ == "RoIHeads"
        assert type(model.roi_heads.box_predictor).__name__ == "FastRCNNPredictor"
        assert model.state_dict().keys() == before.keys()
    P.seesaw_fast_rcnn(model)
    with pytest.raises(ValueError, match="already"):
        P.seesaw_fast_rcnn(model)
    other = tiny()
    other.roi_heads.box_predictor = nn.Identity()
    with pytest.raises(TypeError, match="box_predictor"):
        P.seesaw_fast_rcnn(other)


# --------------------------------------------------------------------------- mixing helper
@needs_tv
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_mix_detection_batch(P, dtype):
    sizes = [(64, 48), (40, 64), (64, 64)]
    images, targets = batch(True, seed=11, sizes=sizes)
    if dtype == torch.uint8:
        images = [im.mul(255).round().to(torch.uint8) for im in images]
    plan = L.LossMix(alpha=1.0, generator=torch.Generator().manual_seed(3)).sample(B)
    mixed = P.mix_detection_batch(images, targets, plan)
    assert torch.equal(mixed.index, plan.index) and torch.equal(mixed.lam, plan.lam)
    canvas = torch.zeros(B, 3, 64, 64)
    for b, im in enumerate(images):
        canvas[b, :, :im.shape[1], :im.shape[2]] = im.float() / (255.0 if dtype == torch.uint8 else 1.0)
    for b in range(B):
        lam, j = float(plan.lam[b]), int(plan.index[b])
        torch.testing.assert_close(mixed.images[b], lam * canvas[b] + (1 - lam) * canvas[j], rtol=1e-5, atol=1e-6)
        t = mixed.targets[b]
        assert torch.equal(t["boxes"], targets[b]["boxes"]) and torch.equal(t["labels"], targets[b]["labels"])
        assert torch.equal(t["iscrowd"], targets[b]["iscrowd"]) and "weights" not in t
        h, w = sizes[b]
        assert t["masks"].shape[1:] == (64, 64) and torch.equal(t["masks"][:, :h, :w], targets[b]["masks"])
        assert t["masks"][:, h:].sum() == 0 and t["masks"][:, :, w:].sum() == 0
    model = P.seesaw_fast_rcnn(tiny(True), normed_mask=True)
    losses = mixed.losses(model)
    assert all(torch.isfinite(v) for v in losses.values())
