"""``lossmix_ext.integrations.mmpretrain`` against mmpretrain 1.x's own ``SeesawLoss`` (its real code).

Skipped without mmpretrain. ``mmpretrain.models`` imports torchvision (its heads import
``mmpretrain.evaluation``, which imports ``torchvision.ops``), which a CPU-only CI may lack or
have in a build that does not match torch; ``mmpretrain/models/losses/seesaw_loss.py`` needs
only torch, ``mmpretrain.registry`` and its sibling ``utils.py``. So, when ``mmpretrain.models``
cannot be imported, the tests load mmpretrain's real loss module under package objects for
``mmpretrain.models`` and ``mmpretrain.models.losses`` whose ``__init__`` is not run; mmengine's
lazy ``import_module("mmpretrain.models")`` then finds that package object. Every expected value
comes from mmpretrain's code; the module without mmpretrain and a config's ``custom_imports`` are
checked in a child process.
"""
import importlib
import inspect
import itertools
import json
import os
import subprocess
import sys
import types

import pytest
import torch

np = pytest.importorskip("numpy", reason="the framework (and these tests) need numpy")
MODELS = pytest.importorskip("mmpretrain.registry", reason="mmpretrain 1.x is not installed").MODELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = "lossmix_ext.integrations.mmpretrain"


from benchmarks.frameworks import package_without_init as _package_without_init  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mm(child_process):
    """mmpretrain's real ``seesaw_loss`` module, the registry before and after the plug-in, and
    the plug-in module. (``child_process`` only starts the clean child early.)"""
    ns = types.SimpleNamespace()
    added = set()
    try:
        importlib.import_module("mmpretrain.models")
        ns.stubbed = False
    except Exception as exc:  # no torchvision, or one built for another torch
        ns.stubbed = f"{type(exc).__name__}: {exc}"
        before = set(sys.modules)
        for name in ("mmpretrain.models", "mmpretrain.models.losses"):
            _package_without_init(name)
        added = set(sys.modules) - before
    own_name = "mmpretrain.models.losses.seesaw_loss"
    if own_name not in sys.modules:
        MODELS.module_dict.pop("SeesawLoss", None)  # the plug-in may have been registered earlier
    before_modules = set(sys.modules)
    ns.own = importlib.import_module(own_name)
    added |= {m for m in set(sys.modules) - before_modules if m.startswith("mmpretrain.models")}
    ns.before_get = MODELS.get("SeesawLoss")
    ns.before_built = MODELS.build(dict(type="SeesawLoss", num_classes=4))
    ns.plugin = importlib.import_module(PLUGIN)
    ns.registered = ns.plugin.register()
    yield ns
    if ns.stubbed:
        for name in added:
            sys.modules.pop(name, None)
        if "models" in vars(sys.modules["mmpretrain"]) and "mmpretrain.models" not in sys.modules:
            delattr(sys.modules["mmpretrain"], "models")


@pytest.fixture(scope="module")
def mm_train(mm):
    """What a classification config needs besides the loss: mmpretrain's ImageClassifier,
    LinearClsHead, GlobalAveragePooling, LeNet5, ClsDataPreprocessor and its batch augments
    (Mixup, CutMix, RandomBatchAugment) — from ``mmpretrain.models`` when it imports, else its
    real modules loaded one by one under package objects (``mmpretrain.models``' ``__init__``
    also needs einops and every backbone's dependencies). The heads import
    ``mmpretrain.evaluation``, hence torchvision (with benchmarks.frameworks' fallback)."""
    from benchmarks.frameworks import import_torchvision
    tv, note = import_torchvision()
    if tv is None:
        pytest.skip(f"mmpretrain's heads need torchvision: {note}")
    before = set(sys.modules)
    if mm.stubbed:
        for name in ("utils", "heads", "classifiers", "backbones", "necks"):
            _package_without_init(f"mmpretrain.models.{name}")
    try:
        for name in ("utils.data_preprocessor", "utils.batch_augments", "classifiers.image", "heads.linear_head",
                     "necks.gap", "backbones.lenet"):
            importlib.import_module(f"mmpretrain.models.{name}")
    except Exception as exc:  # pragma: no cover - a dependency of these modules is missing
        pytest.skip(f"mmpretrain's classifier modules could not be imported: {type(exc).__name__}: {exc}")
    yield mm
    if mm.stubbed:
        for name in set(sys.modules) - before:
            if name.startswith("mmpretrain.models"):
                sys.modules.pop(name, None)


# --------------------------------------------------------------------------- registry
def test_registry_before_and_after(mm):
    own, fused = mm.own.SeesawLoss, mm.plugin.SeesawLoss
    assert mm.before_get is own and type(mm.before_built) is own
    assert mm.registered == ("SeesawLoss", "FusedSeesawLoss")
    assert MODELS.get("SeesawLoss") is fused and MODELS.get("FusedSeesawLoss") is fused
    built = MODELS.build(dict(type="SeesawLoss", p=0.5, q=1.5, num_classes=7, eps=0.02, reduction="sum",
                              loss_weight=2.0))
    assert type(built) is fused
    assert (built.p, built.q, built.num_classes, built.eps, built.reduction, built.loss_weight) == \
        (0.5, 1.5, 7, 0.02, "sum", 2.0)
    built = MODELS.build(dict(type="FusedSeesawLoss", num_classes=3, backend="torch", sync_counts=True))
    assert type(built) is fused and built.backend == "torch" and built.sync_counts
    from mmengine.registry import MODELS as ROOT_MODELS
    assert type(ROOT_MODELS.build(dict(type="mmpretrain.SeesawLoss", num_classes=3))) is fused
    assert mm.plugin.mmpretrain_models_status() == "imported"  # the real package, or the package object


def test_register_force_false_keeps_mmpretrain(mm):
    own, fused = mm.own.SeesawLoss, mm.plugin.SeesawLoss
    MODELS.register_module(name="SeesawLoss", force=True, module=own)
    try:
        assert mm.plugin.register(force=False) == ("FusedSeesawLoss",)
        assert MODELS.get("SeesawLoss") is own and MODELS.get("FusedSeesawLoss") is fused
    finally:
        assert mm.plugin.register() == ("SeesawLoss", "FusedSeesawLoss")
    assert MODELS.get("SeesawLoss") is fused


def test_buffer_and_constructor(mm):
    own, fused = mm.own.SeesawLoss(), mm.plugin.SeesawLoss()
    for attr in ("use_sigmoid", "p", "q", "num_classes", "eps", "reduction", "loss_weight"):
        assert getattr(fused, attr) == getattr(own, attr), attr
    assert list(own.state_dict()) == list(fused.state_dict()) == ["cum_samples"]
    assert fused.cum_samples.shape == own.cum_samples.shape == (1000,)
    assert fused.cum_samples.dtype == own.cum_samples.dtype == torch.float32
    assert list(inspect.signature(type(own).__init__).parameters) == \
        list(inspect.signature(type(fused).__init__).parameters)[:8]
    assert list(inspect.signature(type(own).forward).parameters) == \
        list(inspect.signature(type(fused).forward).parameters)[:6]
    own.cum_samples += torch.arange(1000.0)
    fused.load_state_dict(own.state_dict())
    assert torch.equal(fused.cum_samples, own.cum_samples)
    # a deliberate difference: half-precision conversions keep the counts float32
    assert fused.half().cum_samples.dtype == torch.float32 and fused.double().cum_samples.dtype == torch.float64


# --------------------------------------------------------------------------- parity
def _labels(gen, n, c, dist):
    if dist == "single":
        return torch.full((n,), int(torch.randint(0, c, (1,), generator=gen)), dtype=torch.long)
    if dist == "long_tail":
        w = torch.tensor([1.0 / (k + 1) ** 2 for k in range(c)])
        return torch.multinomial(w, n, replacement=True, generator=gen)
    return torch.randint(0, c, (n,), generator=gen)


def _cases():
    reductions = (None, "none", "mean", "sum")
    avg_factors = (None, "batch", "float", "tensor")
    weights = (None, "random", "int")
    dists = ("uniform", "long_tail", "single")
    pq = ((0.8, 2.0), (0.0, 2.0), (0.8, 0.0), (0.0, 0.0), (1.5, 1.0))
    for i, (red, af, w) in enumerate(itertools.product(reductions, avg_factors, weights)):
        if red == "sum" and af is not None:
            continue  # an error in both: test_sum_with_avg_factor
        seed = 2000 + i
        gen = torch.Generator().manual_seed(seed)
        n = (1, 8, 32, 61)[int(torch.randint(0, 4, (1,), generator=gen))]
        c = (1, 5, 30)[int(torch.randint(0, 3, (1,), generator=gen))]
        p, q = pq[i % len(pq)]
        yield pytest.param(dict(seed=seed, n=n, c=c, dist=dists[i % 3], p=p, q=q, eps=(1e-2, 0.05)[i % 2],
                                loss_weight=(1.0, 0.7)[(i // 2) % 2], red=red, af=af, w=w,
                                backend=(None, "torch")[(i // 3) % 2]),
                           id=f"{red}-{af}-{w}-{dists[i % 3]}-n{n}-c{c}-s{seed}")


@pytest.mark.parametrize("case", list(_cases()))
def test_matches_mmpretrain(mm, case):
    gen = torch.Generator().manual_seed(case["seed"])
    c = case["c"]
    kw = dict(p=case["p"], q=case["q"], num_classes=c, eps=case["eps"], loss_weight=case["loss_weight"])
    ref = mm.own.SeesawLoss(**kw)
    fused = MODELS.build(dict(type="SeesawLoss", backend=case["backend"], **kw))
    for step in range(3):
        n = case["n"]
        x = torch.randn(n, c, generator=gen) * 3
        labels = _labels(gen, n, c, case["dist"])
        weight = {None: None, "random": torch.rand(n, generator=gen),
                  "int": torch.randint(0, 3, (n,), generator=gen)}[case["w"]]
        af = {None: None, "batch": n, "float": n * 0.75, "tensor": torch.tensor(float(n) + 1)}[case["af"]]
        xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        want = ref(xr, labels, weight, avg_factor=af, reduction_override=case["red"])
        got = fused(xf, labels, weight, avg_factor=af, reduction_override=case["red"])
        assert torch.equal(fused.cum_samples, ref.cum_samples), f"counts differ at step {step}"
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        upstream = torch.rand(want.shape, generator=gen) + 0.5
        (want * upstream).sum().backward()
        (got * upstream).sum().backward()
        torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-5, atol=1e-6)


def test_cls_head_call(mm):
    """What mmpretrain's ClsHead does: ``loss(cls_score, target, avg_factor=cls_score.size(0))``."""
    ref, fused = mm.own.SeesawLoss(num_classes=10), MODELS.build(dict(type="SeesawLoss", num_classes=10))
    gen = torch.Generator().manual_seed(11)
    for _ in range(4):
        x = torch.randn(16, 10, generator=gen)
        target = _labels(gen, 16, 10, "long_tail")
        xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        want, got = ref(xr, target, avg_factor=xr.size(0)), fused(xf, target, avg_factor=xf.size(0))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        want.backward()
        got.backward()
        torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(fused.cum_samples, ref.cum_samples)


def test_sum_with_avg_factor(mm):
    ref, fused = mm.own.SeesawLoss(num_classes=3), mm.plugin.SeesawLoss(num_classes=3)
    x, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 2])
    for loss in (ref, fused):
        with pytest.raises(ValueError, match="avg_factor can not be used with reduction"):
            loss(x, labels, avg_factor=2.0, reduction_override="sum")
    # mmpretrain counts the labels before it raises; the fused loss checks first
    assert ref.cum_samples.sum() == 4 and fused.cum_samples.sum() == 0


def test_assertions_match(mm):
    own, fused = mm.own.SeesawLoss, mm.plugin.SeesawLoss
    for cls in (own, fused):
        with pytest.raises(AssertionError):
            cls(use_sigmoid=True)
        loss = cls(num_classes=3)
        with pytest.raises(AssertionError):
            loss(torch.randn(2, 4), torch.tensor([0, 2]))  # 4 columns for 3 classes
        with pytest.raises(AssertionError):
            loss(torch.randn(2, 3), torch.tensor([0, 2, 1]))  # 3 labels for 2 rows
        with pytest.raises(AssertionError):
            loss(torch.randn(2, 3), torch.tensor([0, 2]), reduction_override="avg")
        assert loss.cum_samples.sum() == 0


def test_soft_labels_rejected(mm):
    """Seesaw has no soft-label form beyond the two-class mixtures of Mixup / CutMix: mmpretrain's
    shape assertion fails on any (N, C) scores, the plug-in names ``labels`` and counts nothing."""
    x = torch.randn(4, 3)
    soft = torch.softmax(torch.randn(4, 3), dim=1)
    with pytest.raises(AssertionError):
        mm.own.SeesawLoss(num_classes=3)(x, soft)
    fused = mm.plugin.SeesawLoss(num_classes=3)
    one_hot = torch.eye(3)[[0, 1, 2, 0]]
    for bad in (soft,                                      # three classes per row
                one_hot * 0.9,                             # rows that do not sum to 1
                one_hot * 2 - torch.eye(3)[[1, 2, 0, 1]],  # a negative score
                torch.zeros(4, 3)):
        with pytest.raises(ValueError, match="labels"):
            fused(x, bad)
    with pytest.raises(ValueError, match="labels"):
        fused(x, one_hot[:, :2].contiguous())             # (N, C') scores of another width
    with pytest.raises(ValueError, match="labels_b"):
        fused(x, one_hot, labels_b=torch.tensor([0, 1, 2, 0]), lam=0.5)
    with pytest.raises(ValueError, match="weight"):
        fused(x, torch.tensor([0, 1, 2, 0]), torch.ones(4, 1))
    assert fused.cum_samples.sum() == 0


def _assert_loss_and_grad(got, want, xf, xr, gen):
    """The fused loss equals mmpretrain's, and so do the gradients of both under one random upstream."""
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    up = torch.rand(want.shape, generator=gen) + 0.5
    (want * up).sum().backward()
    (got * up).sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-5, atol=1e-6)


def _decoded(scores):
    """(labels_a, labels_b) of two-class score rows, read with a plain loop (the test's own):
    the non-zero classes of each row, a one-class row's class twice."""
    la, lb = [], []
    for row in scores.tolist():
        ks = [k for k, v in enumerate(row) if v != 0]
        assert 1 <= len(ks) <= 2
        la.append(ks[0])
        lb.append(ks[-1])
    return torch.tensor(la), torch.tensor(lb)


@pytest.mark.parametrize("reduction,af", [("mean", "batch"), ("mean", None), ("sum", None), ("none", None)])
def test_mixed_scores_are_the_lossmix_form(mm, mm_train, reduction, af):
    """``loss(cls_score, gt_score)`` with the scores of mmpretrain's own Mixup / CutMix batch
    augments (its real code) is LossMix: mmpretrain's seesaw_ce_loss of each row's two classes,
    weighted by their scores, after mmpretrain's counting of both classes; an unmixed batch (the
    one-hot scores of RandomBatchAugment's no-augment choice) counts each class twice."""
    from mmpretrain.registry import BATCH_AUGMENTS
    c, n = 6, 12
    gen = torch.Generator().manual_seed(9)
    ref, fused = mm.own.SeesawLoss(num_classes=c), MODELS.build(dict(type="SeesawLoss", num_classes=c))
    augments = [BATCH_AUGMENTS.build(dict(type=t, alpha=a)) for t, a in (("Mixup", 0.8), ("CutMix", 1.0))]
    for aug in augments + [None]:
        np.random.seed(int(torch.randint(0, 1000, (1,), generator=gen)))  # the augments' λ and pairs
        torch.manual_seed(int(torch.randint(0, 1000, (1,), generator=gen)))
        labels = _labels(gen, n, c, "long_tail")
        one_hot = torch.nn.functional.one_hot(labels, c).float()
        scores = one_hot if aug is None else aug(torch.randn(n, 3, 8, 8), one_hot)[1]
        la, lb = _decoded(scores)
        w_a, w_b = scores.gather(1, la[:, None])[:, 0], scores.gather(1, lb[:, None])[:, 0]
        w_b = torch.where(la == lb, torch.zeros_like(w_b), w_b)
        ref(torch.zeros(n, c), la)  # mmpretrain's own counting, one class set after the other
        ref(torch.zeros(n, c), lb)
        x = torch.randn(n, c, generator=gen) * 2
        xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        avg = n if af == "batch" else None
        args = (ref.cum_samples, c, ref.p, ref.q, ref.eps, reduction, avg)
        want = mm.own.seesaw_ce_loss(xr, la, w_a, *args) + mm.own.seesaw_ce_loss(xr, lb, w_b, *args)
        got = fused(xf, scores, avg_factor=avg, reduction_override=reduction)
        assert torch.equal(fused.cum_samples, ref.cum_samples)
        _assert_loss_and_grad(got, want, xf, xr, gen)
    assert fused.cum_samples.sum() == 3 * 2 * n  # two classes counted per sample


@pytest.mark.parametrize("reduction,af,scalar_lam", [("mean", None, False), ("mean", 6, True), ("sum", None, False),
                                                    ("none", None, True), ("mean", torch.tensor(9.0), False)])
def test_lossmix_form(mm, reduction, af, scalar_lam):
    """``labels_b`` / ``lam``: both sets counted; the reference is mmpretrain's counting (its
    forward on each set) and its ``seesaw_ce_loss`` on each set with weights λ·w and (1 − λ)·w."""
    c, n = 6, 20
    gen = torch.Generator().manual_seed(5)
    ref, fused = mm.own.SeesawLoss(num_classes=c, loss_weight=0.5), mm.plugin.SeesawLoss(num_classes=c, loss_weight=0.5)
    for _ in range(3):
        x = torch.randn(n, c, generator=gen) * 2
        la, lb = _labels(gen, n, c, "long_tail"), _labels(gen, n, c, "uniform")
        lam = 0.3 if scalar_lam else torch.rand(n, generator=gen)
        w = torch.rand(n, generator=gen)
        ref(x, la)  # mmpretrain's own counting, one set after the other
        ref(x, lb)
        xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        lam_t = torch.full((n,), lam) if scalar_lam else lam
        args = (ref.cum_samples, c, ref.p, ref.q, ref.eps, reduction, af)
        want = ref.loss_weight * (mm.own.seesaw_ce_loss(xr, la, w * lam_t, *args)
                                  + mm.own.seesaw_ce_loss(xr, lb, w * (1 - lam_t), *args))
        got = fused(xf, la, w, avg_factor=af, reduction_override=reduction, labels_b=lb, lam=lam)
        assert torch.equal(fused.cum_samples, ref.cum_samples)
        _assert_loss_and_grad(got, want, xf, xr, gen)
    with pytest.raises(ValueError, match="lam"):
        fused(x, la, labels_b=lb, lam=1.5)
    with pytest.raises(ValueError, match="labels_b"):
        fused(x, la, labels_b=torch.full((n,), c), lam=0.5)
    assert torch.equal(fused.cum_samples, ref.cum_samples)  # failed calls counted nothing


def test_config_trains_lossmix_seesaw(mm_train):
    """One config, built through mmpretrain's registry: ImageClassifier with mmpretrain's Mixup /
    CutMix batch augments (``train_cfg``) and ``loss=dict(type="SeesawLoss")`` — the plug-in's,
    which reads the mixed gt_score as LossMix. Two ``train_step`` calls (data preprocessor,
    augments, head, loss, backward, SGD step): mixed scores reach the loss, the loss is finite,
    the weights move, and both classes of every sample are counted."""
    from mmengine.optim import OptimWrapper
    from mmpretrain.structures import DataSample
    c, n = 5, 8
    cfg = dict(
        type="ImageClassifier",
        backbone=dict(type="LeNet5"),
        neck=dict(type="GlobalAveragePooling"),
        head=dict(type="LinearClsHead", num_classes=c, in_channels=120,
                  loss=dict(type="SeesawLoss", num_classes=c, p=0.8, q=2.0)),
        data_preprocessor=dict(type="ClsDataPreprocessor", num_classes=c, mean=[127.5], std=[127.5]),
        train_cfg=dict(augments=[dict(type="Mixup", alpha=0.8), dict(type="CutMix", alpha=1.0)]),
    )
    torch.manual_seed(0)
    np.random.seed(0)
    model = MODELS.build(cfg)
    loss_module = model.head.loss_module
    assert type(loss_module) is mm_train.plugin.SeesawLoss
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.05))
    gen = torch.Generator().manual_seed(1)
    seen_scores = []
    original = loss_module.forward

    def spy(cls_score, labels, *args, **kwargs):
        seen_scores.append(labels.detach().clone())
        return original(cls_score, labels, *args, **kwargs)

    loss_module.forward = spy
    for step in range(2):
        labels = _labels(gen, n, c, "uniform")
        data = dict(inputs=[torch.randint(0, 256, (1, 32, 32), dtype=torch.uint8, generator=gen) for _ in range(n)],
                    data_samples=[DataSample().set_gt_label(int(y)) for y in labels])
        before = [p.detach().clone() for p in model.parameters()]
        log = model.train_step(data, optim)
        assert torch.isfinite(log["loss"]), log
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
        scores = seen_scores[-1]
        assert scores.shape == (n, c) and scores.is_floating_point()
        assert ((scores > 0) & (scores < 1)).any(), "the batch augments did not mix"
        assert loss_module.cum_samples.sum() == 2 * n * (step + 1)
        # the pairing is a permutation and no λ is 0 or 1 here: the two classes of the rows are
        # the labels and their partners' labels (the same class twice for a same-class partner)
        la, lb = _decoded(scores)
        assert torch.equal(torch.sort(torch.cat([la, lb])).values, torch.sort(torch.cat([labels, labels])).values)


# --------------------------------------------------------------------------- clean process
_CHILD = r'''
import importlib, json, os, sys, tempfile, warnings
out = {}
sys.modules["mmpretrain"] = None                              # mmpretrain hidden
import torch
plugin = importlib.import_module("lossmix_ext.integrations.mmpretrain")
out["registered_hidden"] = list(plugin.REGISTERED)
out["status_hidden"] = plugin.mmpretrain_models_status()
loss = plugin.SeesawLoss(num_classes=4)
x = torch.randn(6, 4, requires_grad=True)
labels = torch.tensor([0, 1, 1, 3, 3, 3])
value = loss(x, labels)
value.backward()
out["standalone"] = [bool(torch.isfinite(value)), loss.cum_samples.tolist(), bool(torch.isfinite(x.grad).all())]
try:
    plugin.register()
    out["register_hidden"] = None
except ImportError as exc:
    out["register_hidden"] = [type(exc).__name__, str(exc), exc.name]
out["framework_imported"] = "mmpretrain.registry" in sys.modules
del sys.modules["mmpretrain"]
del sys.modules["lossmix_ext.integrations.mmpretrain"]        # imported afresh by the config below
delattr(sys.modules["lossmix_ext.integrations"], "mmpretrain")

from mmengine.config import Config
from mmpretrain.registry import MODELS
path = os.path.join(tempfile.mkdtemp(), "cfg.py")
with open(path, "w") as f:
    f.write("custom_imports = dict(imports=['lossmix_ext.integrations.mmpretrain'], allow_failed_imports=False)\n"
            "loss = dict(type='SeesawLoss', p=0.8, q=2.0, num_classes=1000, loss_weight=1.0)\n")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    cfg = Config.fromfile(path)
out["warnings"] = [str(w.message) for w in caught if "lossmix_ext" in str(w.message)]
plugin = sys.modules["lossmix_ext.integrations.mmpretrain"]
out["registered"] = list(plugin.REGISTERED)
out["status"] = plugin.mmpretrain_models_status()
try:
    built = MODELS.build(cfg.loss)
    out["build"] = type(built).__module__ + "." + type(built).__name__
except Exception as exc:                                      # Registry.get imports mmpretrain.models
    out["build"] = [type(exc).__name__, str(exc), MODELS._imported]
    PACKAGE_WITHOUT_INIT
    for name in ("mmpretrain.models", "mmpretrain.models.losses"):
        _package_without_init(name)
    built = MODELS.build(cfg.loss)
    out["build_with_package_object"] = type(built).__module__ + "." + type(built).__name__
out["num_classes"] = built.num_classes
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def child_process():
    """The clean child process, started before the in-process tests so that the two overlap."""
    src = _CHILD.replace("PACKAGE_WITHOUT_INIT",
                         "from benchmarks.frameworks import package_without_init as _package_without_init")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", src], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def child(child_process):
    stdout, stderr = child_process.communicate(timeout=300)
    assert child_process.returncode == 0, stderr[-4000:]
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_clean_process_without_mmpretrain(child):
    assert child["registered_hidden"] == [] and "not tried" in child["status_hidden"]
    finite, counts, grad_finite = child["standalone"]
    assert finite and grad_finite and counts == [1.0, 2.0, 0.0, 3.0]
    kind, msg, name = child["register_hidden"]
    assert kind == "ImportError" and name == "mmpretrain" and "pip install" in msg
    assert not child["framework_imported"]


def test_clean_process_custom_imports(child):
    assert child["registered"] == ["SeesawLoss", "FusedSeesawLoss"]
    fused = f"{PLUGIN}.SeesawLoss"
    if child["status"] == "imported":
        assert child["build"] == fused and not child["warnings"]
    else:  # mmpretrain.models not importable (e.g. torchvision missing or built for another torch)
        kind, _msg, imported = child["build"]
        assert child["status"].startswith(kind + ":") and imported is False
        assert any("mmpretrain.models" in w for w in child["warnings"])
        assert child["build_with_package_object"] == fused
    assert child["num_classes"] == 1000
