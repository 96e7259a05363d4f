"""examples/long_tailed_digits.py: its long-tailed split, determinism, and a --smoke run of the script.

The data come with scikit-learn (``load_digits``); without it the tests that need them skip.
"""
import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import script_module

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "long_tailed_digits.py"

try:
    import sklearn  # noqa: F401
    HAS_SKLEARN = True
except ImportError:
    HAS_SKLEARN = False
try:
    import matplotlib  # noqa: F401
    HAS_MPL = True
except ImportError:
    HAS_MPL = False

needs_sklearn = pytest.mark.skipif(not HAS_SKLEARN, reason="scikit-learn is not installed (the digits data set)")


@pytest.fixture(scope="module")
def demo():
    with script_module(SCRIPT, "long_tailed_digits") as module:
        yield module


def test_profile(demo):
    counts = demo.long_tailed_counts(demo.Config.n_max, demo.IMBALANCE_RATIO)
    assert len(counts) == demo.NUM_CLASSES and counts[0] == demo.Config.n_max
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert 50 <= counts[0] / counts[-1] <= 100
    assert all(n >= 1 for n in demo.long_tailed_counts(5, 1000.0))


@needs_sklearn
def test_split(demo):
    cfg = demo.Config()
    split = demo.load_split(cfg)
    train = split.train_counts
    assert train == demo.long_tailed_counts(cfg.n_max, demo.IMBALANCE_RATIO)
    assert all(a >= b for a, b in zip(train, train[1:])), train
    assert 50 <= train[0] / train[-1] <= 100, train
    assert split.test_counts == [cfg.test_per_class] * demo.NUM_CLASSES
    assert not set(split.train_idx.tolist()) & set(split.test_idx.tolist())
    for x in (split.x_train, split.x_test):
        assert x.dtype == demo.torch.float32 and tuple(x.shape[1:]) == (1, 8, 8)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    again = demo.load_split(cfg)  # fixed: the same split every time
    assert (again.train_idx == split.train_idx).all() and (again.test_idx == split.test_idx).all()


@needs_sklearn
def test_training_is_deterministic(demo):
    split = demo.load_split(demo.SMOKE)
    runs = [demo.train_run(split, "seesaw+lossmix", 3, demo.SMOKE, log=lambda line: None) for _ in range(2)]
    assert runs[0].epoch_losses == runs[1].epoch_losses
    assert runs[0].per_class_acc == runs[1].per_class_acc


def _rows(path: Path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@needs_sklearn
def test_smoke_run(demo, tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(tmp_path) in proc.stdout

    fields, rows = _rows(tmp_path / "results.csv")
    assert fields == demo.CSV_FIELDS
    train = [r for r in rows if r["row_type"] == "train"]
    timing = [r for r in rows if r["row_type"] == "timing"]
    assert len(train) + len(timing) == len(rows)
    assert sorted(r["recipe"] for r in train) == sorted(demo.RECIPES)  # 1 seed each
    for r in train:
        accs = [float(r["overall_acc"]), float(r["tail_acc"])] + \
            [float(r[f"acc_class_{c}"]) for c in range(demo.NUM_CLASSES)]
        assert all(0.0 <= a <= 1.0 for a in accs), r
        assert math.isfinite(float(r["final_train_loss"]))
    impls = {(r["timing_loss"], r["timing_impl"]) for r in timing}
    assert {("seesaw_loss", "fused"), ("seesaw_loss", "reference"), ("cross_entropy", "F.cross_entropy")} <= impls
    assert all(float(r["ms_per_epoch_median"]) > 0 for r in timing)
    assert {r["backend"] for r in timing if r["timing_impl"] == "reference"} == {"torch"}

    summary = (tmp_path / "summary.md").read_text()
    assert "| recipe | overall acc (mean ± std) |" in summary
    for recipe in demo.RECIPES:
        assert f"\n| {recipe} | " in summary
    assert "| `seesaw_loss` | fused |" in summary and "| `seesaw_loss` | reference | torch |" in summary
    assert "torch " in summary and "train counts per class" in summary

    png = tmp_path / "accuracy.png"
    if HAS_MPL:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not png.exists() and "matplotlib is not installed" in proc.stdout
