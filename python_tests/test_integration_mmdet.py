"""``lossmix_ext.integrations.mmdet`` against mmdetection 3.x's own ``SeesawLoss`` (its real code).

Skipped without mmdetection. ``mmdet.models`` needs mmcv's compiled ops; with ``mmcv-lite`` its
``__init__`` fails (→ ``layers/bbox_nms.py`` → ``mmcv.ops`` → ``mmcv._ext``), while
``mmdet/models/losses/seesaw_loss.py`` needs only torch, ``mmdet.registry`` and three sibling
modules. So, when ``mmdet.models`` cannot be imported, the tests load mmdetection's real loss
module under package objects for ``mmdet.models`` and ``mmdet.models.losses`` whose
``__init__`` is not run (:func:`_package_without_init`); mmengine's lazy
``import_module("mmdet.models")`` then finds that package object, so ``MODELS.build`` works.
With full mmcv the real ``mmdet.models`` is used. Every expected value comes from mmdetection's
code; the registry's import-order behaviour and the module without mmdetection are checked in a
child process (:func:`test_clean_process`).
"""
import importlib
import itertools
import json
import os
import subprocess
import sys
import types

import pytest
import torch

MODELS = pytest.importorskip("mmdet.registry", reason="mmdetection 3.x is not installed").MODELS

import lossmix_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = "lossmix_ext.integrations.mmdet"


from benchmarks.frameworks import package_without_init as _package_without_init  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mm(child_process):
    """mmdetection's real ``seesaw_loss`` module, the registry state before and after the
    plug-in, and the plug-in module. (``child_process`` only starts the clean child early.)"""
    ns = types.SimpleNamespace()
    added = set()
    try:
        importlib.import_module("mmdet.models")
        ns.stubbed = False
    except Exception as exc:  # mmcv-lite: ModuleNotFoundError: No module named 'mmcv._ext'
        ns.stubbed = f"{type(exc).__name__}: {exc}"
        before = set(sys.modules)
        for name in ("mmdet.models", "mmdet.models.losses"):
            _package_without_init(name)
        added = set(sys.modules) - before
    own_name = "mmdet.models.losses.seesaw_loss"
    if own_name not in sys.modules:
        # the plug-in may have been registered earlier in this process: free the name, as a
        # process that imports mmdet.models before the plug-in has it
        MODELS.module_dict.pop("SeesawLoss", None)
    before_modules = set(sys.modules)
    ns.own = importlib.import_module(own_name)
    added |= {m for m in set(sys.modules) - before_modules if m.startswith("mmdet.models")}
    ns.before_get = MODELS.get("SeesawLoss")
    ns.before_built = MODELS.build(dict(type="SeesawLoss", num_classes=4))
    ns.plugin = importlib.import_module(PLUGIN)
    ns.registered = ns.plugin.register()  # (already done by the import unless imported before)
    yield ns
    if ns.stubbed:  # leave no package objects behind for other test modules
        for name in added:
            sys.modules.pop(name, None)
        if "models" in vars(sys.modules["mmdet"]) and "mmdet.models" not in sys.modules:
            delattr(sys.modules["mmdet"], "models")


# --------------------------------------------------------------------------- registry
def test_registry_before_and_after(mm):
    own, fused = mm.own.SeesawLoss, mm.plugin.FusedSeesawLoss
    assert mm.before_get is own and type(mm.before_built) is own
    assert mm.registered == ("SeesawLoss", "FusedSeesawLoss")
    assert MODELS.get("SeesawLoss") is fused and MODELS.get("FusedSeesawLoss") is fused
    assert issubclass(fused, lossmix_ext.SeesawLoss)
    cfg = dict(type="SeesawLoss", p=0.5, q=1.5, num_classes=7, eps=0.02, reduction="sum", loss_weight=2.0,
               return_dict=False)
    built = MODELS.build(cfg)
    assert type(built) is fused
    assert (built.p, built.q, built.num_classes, built.eps, built.reduction, built.loss_weight, built.return_dict) == \
        (0.5, 1.5, 7, 0.02, "sum", 2.0, False)
    built = MODELS.build(dict(type="FusedSeesawLoss", num_classes=3, backend="torch", sync_counts=True))
    assert type(built) is fused and built.backend == "torch" and built.sync_counts
    assert built.cum_samples.shape == (4,) and built.cum_samples.dtype == torch.float32
    # from mmengine's root registry with mmdetection's scope, as a config with default_scope does
    from mmengine.registry import MODELS as ROOT
    assert type(ROOT.build(dict(type="mmdet.SeesawLoss", num_classes=3))) is fused
    assert mm.plugin.mmdet_models_status() == "imported"  # the real package, or the package object


def test_register_force_false_keeps_mmdetection(mm):
    own, fused = mm.own.SeesawLoss, mm.plugin.FusedSeesawLoss
    MODELS.register_module(name="SeesawLoss", force=True, module=own)
    try:
        assert mm.plugin.register(force=False) == ("FusedSeesawLoss",)
        assert MODELS.get("SeesawLoss") is own and MODELS.get("FusedSeesawLoss") is fused
    finally:
        assert mm.plugin.register() == ("SeesawLoss", "FusedSeesawLoss")
    assert MODELS.get("SeesawLoss") is fused
    with pytest.raises(TypeError, match="force"):
        mm.plugin.register(force="yes")


# --------------------------------------------------------------------------- parity
def _labels(gen, n, c, dist):
    if dist == "all_bg":
        return torch.full((n,), c, dtype=torch.long)
    if dist == "no_bg":
        return torch.randint(0, c, (n,), generator=gen)
    if dist == "long_tail":  # class k with weight 1/(k+1)^2, plus background
        w = torch.tensor([1.0 / (k + 1) ** 2 for k in range(c)] + [0.5])
        return torch.multinomial(w, n, replacement=True, generator=gen)
    bg = torch.rand(n, generator=gen) < 0.5
    return torch.where(bg, torch.full((n,), c), torch.randint(0, c, (n,), generator=gen))


def _cases():
    reductions = (None, "none", "mean", "sum")
    avg_factors = (None, "float", "tensor")
    weights = (None, "random")
    dicts = (True, False)
    dists = ("mixed", "no_bg", "all_bg", "long_tail")
    pq = ((0.8, 2.0), (0.0, 2.0), (0.8, 0.0), (0.0, 0.0), (1.5, 1.0))
    for i, (red, af, lw, rd) in enumerate(itertools.product(reductions, avg_factors, weights, dicts)):
        if red == "sum" and af is not None:
            continue  # an error in both: test_sum_with_avg_factor
        seed = 1000 + i
        gen = torch.Generator().manual_seed(seed)
        n = (1, 7, 33, 64)[int(torch.randint(0, 4, (1,), generator=gen))]
        c = (1, 4, 20)[int(torch.randint(0, 3, (1,), generator=gen))]
        dist = dists[i % len(dists)]
        p, q = pq[i % len(pq)]
        yield pytest.param(dict(seed=seed, n=n, c=c, dist=dist, p=p, q=q, eps=(1e-2, 0.05)[i % 2],
                                loss_weight=(1.0, 0.7)[i % 2], red=red, af=af, lw=lw, rd=rd,
                                backend=(None, "torch")[(i // 2) % 2]),
                           id=f"{red}-{af}-{lw}-{'dict' if rd else 'sum'}-{dist}-n{n}-c{c}-s{seed}")


def _flat(out):
    return [out[k] for k in ("loss_cls_objectness", "loss_cls_classes")] if isinstance(out, dict) else [out]


def _run(loss, x, labels, weights, avg_factor, red):
    x = x.clone().requires_grad_(True)
    try:
        out = loss(x, labels, weights, avg_factor=avg_factor, reduction_override=red)
    except Exception as exc:  # e.g. reduction 'none' + return_dict=False: (N_pos,) + (N,) in both
        return exc, None, None
    return out, x, _flat(out)


@pytest.mark.parametrize("case", list(_cases()))
def test_matches_mmdetection(mm, case):
    gen = torch.Generator().manual_seed(case["seed"])
    c = case["c"]
    kw = dict(p=case["p"], q=case["q"], num_classes=c, eps=case["eps"], loss_weight=case["loss_weight"],
              return_dict=case["rd"])
    ref = mm.own.SeesawLoss(**kw)
    fused = MODELS.build(dict(type="SeesawLoss", backend=case["backend"], **kw))
    for step in range(3):  # the counts grow between calls, so later calls depend on them
        n = case["n"]
        x = torch.randn(n, c + 2, generator=gen) * 3
        labels = _labels(gen, n, c, case["dist"])
        weights = None if case["lw"] is None else torch.rand(n, generator=gen) * (torch.rand(n, generator=gen) > 0.2)
        af = case["af"]
        if af == "float":  # what mmdetection's BBoxHead.loss passes
            af = max(float((weights if weights is not None else torch.ones(n)).gt(0).sum()), 1.0)
        elif af == "tensor":
            af = torch.tensor(float(n) / 2)
        want, xr, want_flat = _run(ref, x, labels, weights, af, case["red"])
        got, xf, got_flat = _run(fused, x, labels, weights, af, case["red"])
        assert torch.equal(fused.cum_samples, ref.cum_samples), f"counts differ at step {step}"
        if isinstance(want, Exception):
            assert isinstance(got, type(want)), f"mmdetection raised {want!r}, the fused loss gave {got!r}"
            continue
        assert type(got) is type(want)
        if isinstance(want, dict):
            assert list(got) == list(want)
        upstream = []
        for w, g in zip(want_flat, got_flat, strict=True):
            assert g.shape == w.shape and g.dtype == w.dtype
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
            upstream.append(torch.rand(w.shape, generator=gen) + 0.5)
        sum((w * u).sum() for w, u in zip(want_flat, upstream, strict=True)).backward()
        sum((g * u).sum() for g, u in zip(got_flat, upstream, strict=True)).backward()
        torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-5, atol=1e-6)


def test_sum_with_avg_factor(mm):
    ref, fused = mm.own.SeesawLoss(num_classes=3), mm.plugin.FusedSeesawLoss(num_classes=3)
    x, labels = torch.randn(5, 5), torch.tensor([0, 1, 3, 2, 3])
    for loss in (ref, fused):
        with pytest.raises(ValueError, match="avg_factor can not be used with reduction"):
            loss(x, labels, avg_factor=2.0, reduction_override="sum")
    # mmdetection counts the labels before it raises; the fused loss checks first
    assert ref.cum_samples.sum() == 5 and fused.cum_samples.sum() == 0


def test_bbox_head_calls(mm):
    """The calls mmdetection's BBoxHead makes: loss with label_weights and a float avg_factor,
    then get_accuracy, get_activation for prediction and refinement (also on no rows)."""
    c = 6
    ref, fused = mm.own.SeesawLoss(num_classes=c), MODELS.build(dict(type="SeesawLoss", num_classes=c))
    gen = torch.Generator().manual_seed(7)
    for n in (16, 5, 0):
        x = torch.randn(n, c + 2, generator=gen)
        labels = _labels(gen, n, c, "mixed")
        label_weights = torch.ones(n)
        if n:
            avg_factor = max(torch.sum(label_weights > 0).float().item(), 1.0)
            want = ref(x, labels, label_weights, avg_factor=avg_factor, reduction_override=None)
            got = fused(x, labels, label_weights, avg_factor=avg_factor, reduction_override=None)
            for k in want:
                torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
            for k, v in ref.get_accuracy(x, labels).items():
                g = fused.get_accuracy(x, labels)[k]
                assert g.shape == v.shape and torch.equal(g, v), k
        torch.testing.assert_close(fused.get_activation(x), ref.get_activation(x), rtol=1e-6, atol=1e-7)
        assert fused.get_activation(x).shape == (n, c + 1)
    assert torch.equal(fused.cum_samples, ref.cum_samples)


def test_methods_and_flags(mm):
    for c in (1, 5, 80):
        ref, fused = mm.own.SeesawLoss(num_classes=c), mm.plugin.FusedSeesawLoss(num_classes=c)
        assert fused.get_cls_channels(c) == ref.get_cls_channels(c) == c + 2
        for flag in ("custom_cls_channels", "custom_activation", "custom_accuracy", "use_sigmoid", "p", "q", "eps",
                     "reduction", "loss_weight", "return_dict", "num_classes"):
            assert getattr(fused, flag) == getattr(ref, flag), flag
        gen = torch.Generator().manual_seed(c)
        x = torch.randn(11, c + 2, generator=gen) * 4
        torch.testing.assert_close(fused.get_activation(x), ref.get_activation(x), rtol=1e-6, atol=1e-7)
        for dist in ("mixed", "no_bg", "all_bg"):
            labels = _labels(gen, 11, c, dist)
            want, got = ref.get_accuracy(x, labels), fused.get_accuracy(x, labels)
            assert list(got) == list(want)
            for k in want:
                assert got[k].shape == want[k].shape and torch.equal(got[k], want[k]), (dist, k)
        # state dicts load both ways (same key, shape, dtype)
        assert list(ref.state_dict()) == list(fused.state_dict()) == ["cum_samples"]
        ref.cum_samples += torch.arange(c + 1.0)
        fused.load_state_dict(ref.state_dict())
        assert torch.equal(fused.cum_samples, ref.cum_samples)
        ref.load_state_dict(fused.state_dict())


def test_assertions_match(mm):
    own, fused = mm.own.SeesawLoss, mm.plugin.FusedSeesawLoss
    for cls in (own, fused):
        with pytest.raises(AssertionError):
            cls(use_sigmoid=True)
        loss = cls(num_classes=3)
        with pytest.raises(AssertionError):
            loss.get_cls_channels(4)
        with pytest.raises(AssertionError):
            loss(torch.randn(2, 4), torch.tensor([0, 3]))  # C + 1 columns instead of C + 2
        with pytest.raises(AssertionError):
            loss(torch.randn(2, 5), torch.tensor([0, 3]), reduction_override="avg")


def test_lossmix_form_counts_both_sets(mm):
    """The LossMix form (an addition): both label sets counted, λ and 1 − λ weights; the
    reference is mmdetection's loss on each set with the counts of both."""
    c, n = 5, 12
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, c + 2, generator=gen)
    la, lb = _labels(gen, n, c, "mixed"), _labels(gen, n, c, "mixed")
    lam = torch.rand(n, generator=gen)
    fused = mm.plugin.FusedSeesawLoss(num_classes=c)
    fused.cum_samples += torch.arange(c + 1.0) * 3
    ref = mm.own.SeesawLoss(num_classes=c)
    ref.cum_samples += torch.arange(c + 1.0) * 3
    ref.cum_samples += torch.bincount(torch.cat([la, lb]), minlength=c + 1)
    got = fused(x, la, labels_b=lb, lam=lam)
    assert torch.equal(fused.cum_samples, ref.cum_samples)
    pos_a, pos_b = la < c, lb < c
    counts = ref.cum_samples[:c]
    args = (counts, c, ref.p, ref.q, ref.eps)
    cls = (mm.own.seesaw_ce_loss(x[pos_a, :c], la[pos_a], lam[pos_a], *args)
           + mm.own.seesaw_ce_loss(x[pos_b, :c], lb[pos_b], (1 - lam)[pos_b], *args))
    ce = importlib.import_module("mmdet.models.losses.cross_entropy_loss").cross_entropy
    obj = ce(x[:, c:], (la == c).long(), lam) + ce(x[:, c:], (lb == c).long(), 1 - lam)
    torch.testing.assert_close(got["loss_cls_classes"], cls, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["loss_cls_objectness"], obj, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- clean process
_CHILD = r'''
import importlib, json, os, sys, tempfile, warnings
out = {}
sys.modules["mmdet"] = None                                   # mmdetection hidden
try:
    importlib.import_module("lossmix_ext.integrations.mmdet")
    out["hidden"] = None
except ImportError as exc:
    out["hidden"] = [type(exc).__name__, str(exc), exc.name]
out["left_behind"] = "lossmix_ext.integrations.mmdet" in sys.modules
del sys.modules["mmdet"]

from mmengine.config import Config
from mmdet.registry import MODELS
path = os.path.join(tempfile.mkdtemp(), "cfg.py")
with open(path, "w") as f:
    f.write("custom_imports = dict(imports=['lossmix_ext.integrations.mmdet'], allow_failed_imports=False)\n"
            "loss_cls = dict(type='SeesawLoss', p=0.8, q=2.0, num_classes=1203, loss_weight=1.0)\n")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    cfg = Config.fromfile(path)                               # imports the plug-in
out["warnings"] = [str(w.message) for w in caught if "lossmix_ext" in str(w.message)]
plugin = sys.modules["lossmix_ext.integrations.mmdet"]
out["registered"] = list(plugin.REGISTERED)
out["status"] = plugin.mmdet_models_status()
out["get_before_models"] = None
try:
    built = MODELS.build(cfg.loss_cls)
    out["build"] = type(built).__module__ + "." + type(built).__name__
except Exception as exc:                                      # mmcv-lite: Registry.get imports mmdet.models
    out["build"] = [type(exc).__name__, str(exc), MODELS._imported]
    PACKAGE_WITHOUT_INIT
    for name in ("mmdet.models", "mmdet.models.losses"):
        _package_without_init(name)
    built = MODELS.build(cfg.loss_cls)
    out["build_with_package_object"] = type(built).__module__ + "." + type(built).__name__
    try:
        importlib.import_module("mmdet.models.losses.seesaw_loss")
        out["own_after_plugin"] = "imported"
    except KeyError as exc:
        out["own_after_plugin"] = ["KeyError", str(exc)]
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


def test_clean_process_without_mmdetection(child):
    kind, msg, name = child["hidden"]
    assert kind == "ImportError" and name == "mmdet"
    assert "needs mmdetection 3.x" in msg and "pip install" in msg and "mmcv" in msg
    assert not child["left_behind"]


def test_clean_process_custom_imports(child):
    """A config's ``custom_imports`` registers the fused loss; without mmcv's compiled ops the
    registry cannot build anything (mmengine imports ``mmdet.models`` in ``Registry.get``
    without catching its error), which the plug-in reports."""
    assert child["registered"] == ["SeesawLoss", "FusedSeesawLoss"]
    fused = f"{PLUGIN}.FusedSeesawLoss"
    if child["status"] == "imported":  # full mmcv
        assert child["build"] == fused and not child["warnings"]
    else:  # mmcv-lite
        assert "mmcv._ext" in child["status"], child["status"]
        kind, msg, imported = child["build"]
        assert kind == "ModuleNotFoundError" and "mmcv._ext" in msg and imported is False
        assert any("mmdet.models" in w for w in child["warnings"])
        assert child["build_with_package_object"] == fused
        # mmdetection's module registers with force=False: imported after the plug-in, it fails
        assert child["own_after_plugin"][0] == "KeyError" and "SeesawLoss" in child["own_after_plugin"][1]
    assert child["num_classes"] == 1203
