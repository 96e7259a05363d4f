"""examples/long_tailed_detection.py: its synthetic long-tailed detection set, and a --smoke run.

The data tests need torch only. The smoke run needs torchvision's detection ops next to the
installed torch, torchmetrics and pycocotools: it skips with the reason elsewhere (the main CI
job's CPU torch cannot load PyPI's torchvision ops; CI's second stage, with torch 2.14.1 and
torchvision 0.29.1, runs it).
"""
import csv
import importlib.util
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from scripts import script_module

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "long_tailed_detection.py"
sys.path.insert(0, str(ROOT))
from benchmarks.frameworks import torchvision_detection_status  # noqa: E402


def _missing(*names):
    return [n for n in names if importlib.util.find_spec(n) is None]


@pytest.fixture(scope="module")
def demo():
    with script_module(SCRIPT, "long_tailed_detection") as module:
        yield module


def test_profile_is_long_tailed(demo):
    counts = demo.long_tailed_counts(demo.Config.n_max, demo.IMBALANCE_RATIO)
    assert len(counts) == demo.NUM_CLASSES >= 8
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert counts[0] / counts[-1] >= 50


@pytest.mark.parametrize("h,w", [(24, 20), (14, 30), (17, 17)])
def test_shapes_are_distinct_and_fill_their_box(demo, h, w):
    masks = [demo.shape_mask(c, h, w) for c in range(demo.NUM_CLASSES)]
    for c, m in enumerate(masks):
        assert m.shape == (h, w)
        # the shape spans nearly all of its box (the detector's box is its exact extent)
        assert int(m.any(1).sum()) >= h - 2 and int(m.any(0).sum()) >= w - 2, demo.CLASSES[c]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert (masks[i] != masks[j]).float().mean() > 0.05, (demo.CLASSES[i], demo.CLASSES[j])


def test_data_set(demo):
    cfg = replace(demo.Config(), n_max=60, test_per_class=3)
    data = demo.make_data(cfg)
    assert demo.DataSet.counts(data.train) == demo.long_tailed_counts(60, demo.IMBALANCE_RATIO)
    assert demo.DataSet.counts(data.test) == [3] * demo.NUM_CLASSES
    S = cfg.image_size
    for img, t in data.train + data.test:
        assert img.dtype == torch.uint8 and img.shape == (3, S, S)
        b = t["boxes"]
        assert 1 <= len(b) <= 3 and t["labels"].min() >= 1 and t["labels"].max() <= demo.NUM_CLASSES
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= S).all() and (b[:, 3] <= S).all()
        wh = b[:, 2:] - b[:, :2]
        assert (wh >= cfg.min_obj - 2).all() and (wh <= cfg.max_obj).all()
        for (x0, y0, x1, y1) in b.int().tolist():  # tight: the object reaches every side of its box
            inside = (img[:, y0:y1, x0:x1].float() / 255).amin(0) >= 0.5  # the colours are >= 0.5 in every channel
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        for i in range(len(b)):  # no two objects overlap
            for j in range(i + 1, len(b)):
                ix = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0])
                iy = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])
                assert ix <= 0 or iy <= 0
    again = demo.make_data(cfg)  # the data seed fixes the set
    assert all(torch.equal(a[0], b[0]) for a, b in zip(data.train, again.train))


TV = torchvision_detection_status()
MISSING = _missing("torchmetrics", "pycocotools")


@pytest.mark.skipif(TV != "ok", reason=f"torchvision detection models cannot run: {TV}")
@pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)} (the mAP)")
def test_smoke_run(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["recipe"] for r in rows] == ["plain", "c+2-head", "seesaw", "lossmix", "seesaw+lossmix"]
    for r in rows:
        for key in ("map", "map50", "tail_ap", "head_ap", "final_loss"):
            assert math.isfinite(float(r[key])), (r["recipe"], key, r[key])
        assert 0.0 <= float(r["map"]) <= 1.0
    summary = (tmp_path / "summary.md").read_text()
    assert "| `seesaw+lossmix` |" in summary and "imbalance" in summary
    # --resume keeps the finished runs and trains nothing more
    first = (tmp_path / "results.csv").read_text()
    again = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--resume", "--out", str(tmp_path)],
                           capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert " seed 0: mAP" not in again.stdout
    assert (tmp_path / "results.csv").read_text() == first
