"""The timm plug-ins (``lossmix_ext.integrations.timm``) against timm's own classes, side by side.

Three cases, each for the three modes, with mixup α = 0.8 and CutMix α = 1.0 (timm's recipes),
label smoothing 0.1 and 1000 classes, called as timm's training script calls them:

* ``Mixup float32``: ``x, soft = mixup_fn(x, target)`` on a float32 batch (both mix in place;
  the values stay bounded, so repeated calls are fair). Goal (issue "framework plug-ins"):
  ``elem`` mode, B = 128, 3×224×224 on the CPU, at least 5× faster than timm's. timm's ``elem``
  and ``pair`` modes clone the batch and loop over the samples in Python; ``batch`` mode is
  already one vectorised in-place pass in timm.
* ``Mixup bfloat16``: the same on a bfloat16 batch (``--model-dtype bfloat16`` without the
  prefetcher). On the CPU the cpu backend's native half-precision kernel mixes it; ``before_ms``
  is the plug-in on the torch kernels (``backend="torch"``, where half-precision batches went
  before the cpu backend took them), timed in the same rounds.
* ``FastCollateMixup uint8``: ``batch, soft = collate_fn(samples)`` on B (image, label) pairs as
  timm's loader gives them with its prefetcher (uint8 CHW views of HWC arrays, from ToNumpy),
  with one intra-op thread, as in a DataLoader worker process. Goal (issue 21): ``elem`` mode,
  B = 128, 224×224, at least 3× faster than timm's.

The providers are interleaved round by round (the starting one alternates) and each round's
ratio is taken back to back; reported are medians over the rounds and the ratio's 20th–80th
percentiles.

Needs timm (``pip install --no-deps timm`` next to an installed torch); skipped otherwise.
"""
from __future__ import annotations

import csv
import os
import statistics
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .timing import wall_seconds

GOALS = {("Mixup float32", "elem"): 5.0, ("FastCollateMixup uint8", "elem"): 3.0}
MODES = ("elem", "pair", "batch")
CASES = ("Mixup float32", "Mixup bfloat16", "FastCollateMixup uint8")


@dataclass
class MixupRow:
    case: str
    mode: str
    batch: int
    shape: str
    device: str
    ours_ms: float
    timm_ms: float
    speedup: float       # timm / ours, median over rounds
    speedup_p20: float
    speedup_p80: float
    goal: Optional[float]
    rounds: int
    threads: int
    before_ms: Optional[float] = None  # bfloat16 on the CPU: the plug-in through the torch kernels

    @property
    def ok(self) -> Optional[bool]:
        return None if self.goal is None else self.speedup >= self.goal


def _samples(batch: int, size: int, seed: int = 0):
    """(image, label) pairs as timm's loader yields them with the prefetcher: CHW views of HWC
    uint8 arrays (timm's ToNumpy)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    return [(np.rollaxis(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), 2), int(rng.integers(0, 1000)))
            for _ in range(batch)]


def _compare(fns: Dict[str, Callable[[], object]], device: torch.device, rounds: int,
             warmup: int) -> Tuple[Dict[str, float], List[float]]:
    """Median seconds per provider and the per-round ratios timm / ours, interleaved."""
    names = list(fns)
    samples: Dict[str, List[float]] = {k: [] for k in names}
    ratios = []
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        got = {k: wall_seconds(fns[k], device) for k in order}
        if r >= warmup:
            for k, v in got.items():
                samples[k].append(v)
            ratios.append(got["timm"] / got["ours"])
    return {k: statistics.median(v) for k, v in samples.items()}, ratios


def run(device: Optional[str] = None, out: Optional[str] = None, batch: int = 128, size: int = 224,
        rounds: int = 15, warmup: int = 2, modes: Sequence[str] = MODES, cases: Sequence[str] = CASES,
        echo: Callable[[str], None] = print) -> List[MixupRow]:
    from .frameworks import import_timm

    timm, note = import_timm()
    if timm is None:
        echo(f"timm Mixup comparison skipped: {note}")
        return []
    if note:
        echo(f"note: {note}")
    from timm.data import FastCollateMixup as TimmCollate
    from timm.data import Mixup as TimmMixup

    import lossmix_ext.integrations.timm as plugin

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g = torch.Generator(device=dev).manual_seed(0)
    x32 = torch.randn(batch, 3, size, size, device=dev, generator=g)
    target = torch.randint(0, 1000, (batch,), device=dev, generator=g)
    samples = _samples(batch, size) if "FastCollateMixup uint8" in cases else None
    full = batch == 128 and size == 224
    rows = []
    for case in cases:
        collate = case.startswith("FastCollateMixup")
        case_dev = torch.device("cpu") if collate else dev
        threads = torch.get_num_threads()
        for mode in modes:
            kw = dict(mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode, label_smoothing=0.1, num_classes=1000)
            if collate:
                fns = {"ours": (lambda m=plugin.FastCollateMixup(**kw): m(samples)),
                       "timm": (lambda m=TimmCollate(**kw): m(samples))}
            else:
                x = x32 if case == "Mixup float32" else x32.to(torch.bfloat16)
                fns = {"ours": (lambda m=plugin.Mixup(**kw): m(x, target)),
                       "timm": (lambda m=TimmMixup(**kw): m(x, target))}
                if x.dtype == torch.bfloat16 and x.device.type == "cpu":  # the former path: the torch kernels
                    fns["before"] = (lambda m=plugin.Mixup(**kw, backend="torch"): m(x, target))
            if collate:
                threads = 1  # a DataLoader worker process runs with one intra-op thread
                saved = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    med, ratios = _compare(fns, case_dev, rounds, warmup)
                finally:
                    torch.set_num_threads(saved)
            else:
                med, ratios = _compare(fns, case_dev, rounds, warmup)
            qs = statistics.quantiles(ratios, n=5)
            goal = GOALS.get((case, mode)) if case_dev.type == "cpu" and full else None
            rows.append(MixupRow(case, mode, batch, f"3x{size}x{size}", case_dev.type, med["ours"] * 1e3,
                                 med["timm"] * 1e3, statistics.median(ratios), qs[0], qs[-1], goal, rounds, threads,
                                 med["before"] * 1e3 if "before" in med else None))
    echo(format_table(rows, timm.__version__))
    if out is not None:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "timm_mixup.csv")
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", "mode", "B", "image", "device", "ours_ms", "timm_ms", "speedup", "speedup_p20",
                        "speedup_p80", "goal", "ok", "rounds", "torch", "timm", "threads", "before_ms"])
            for r in rows:
                w.writerow([r.case, r.mode, r.batch, r.shape, r.device, f"{r.ours_ms:.3f}", f"{r.timm_ms:.3f}",
                            f"{r.speedup:.2f}", f"{r.speedup_p20:.2f}", f"{r.speedup_p80:.2f}",
                            "" if r.goal is None else r.goal, "" if r.ok is None else r.ok, r.rounds,
                            torch.__version__, timm.__version__, r.threads,
                            "" if r.before_ms is None else f"{r.before_ms:.3f}"])
        echo(f"wrote {path}")
    return rows


def format_table(rows: Sequence[MixupRow], timm_version: str = "") -> str:
    lines = [f"timm (timm {timm_version}) vs lossmix_ext.integrations.timm: x, soft = mixup_fn(x, y) / "
             "batch, soft = collate_fn(samples), ms per call (medians), speed-up = timm / ours",
             f"{'case':<24}{'mode':<7}{'B':>5}{'image':>12}{'thr':>5}{'ours ms':>10}{'timm ms':>10}{'speed-up':>10}"
             f"{'p20-p80':>13}{'goal':>7}  ok   before ms"]
    for r in rows:
        goal = "" if r.goal is None else f"{r.goal:.0f}x"
        ok = "" if r.ok is None else ("yes" if r.ok else "NO")
        before = "" if r.before_ms is None else f"{r.before_ms:.2f}"
        lines.append(f"{r.case:<24}{r.mode:<7}{r.batch:>5}{r.shape:>12}{r.threads:>5}{r.ours_ms:>10.2f}"
                     f"{r.timm_ms:>10.2f}{r.speedup:>9.1f}x{r.speedup_p20:>6.1f}-{r.speedup_p80:<6.1f}{goal:>6}  "
                     f"{ok:<4} {before:>9}")
    return "\n".join(lines)
