"""``lossmix_ext.integrations.timm.Mixup`` against timm's own ``timm.data.Mixup``, side by side.

Both are called as timm's training script calls them, ``x, soft = mixup_fn(x, target)``, on the
same batch (both mix in place; the values stay bounded, so repeated calls are fair), with
mixup α = 0.8 and CutMix α = 1.0 (timm's recipes), label smoothing 0.1 and 1000 classes, for
the three modes. The two are interleaved round by round (the starting one alternates) and
each round's ratio is taken back to back; reported are medians over the rounds and the
ratio's 20th–80th percentiles. Goal (issue "framework plug-ins"): ``elem`` mode, B = 128,
3×224×224 float32 on the CPU, at least 5× faster than timm's. timm's ``elem`` and ``pair``
modes clone the batch and loop over the samples in Python; ``batch`` mode is already one
vectorised in-place pass in timm.

Needs timm (``pip install --no-deps timm`` next to an installed torch); skipped otherwise.
"""
from __future__ import annotations

import csv
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

GOALS = {"elem": 5.0}
MODES = ("elem", "pair", "batch")


@dataclass
class MixupRow:
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

    @property
    def ok(self) -> Optional[bool]:
        return None if self.goal is None else self.speedup >= self.goal


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def run(device: Optional[str] = None, out: Optional[str] = None, batch: int = 128, size: int = 224,
        rounds: int = 15, warmup: int = 2, modes: Sequence[str] = MODES,
        echo: Callable[[str], None] = print) -> List[MixupRow]:
    from .frameworks import import_timm

    timm, note = import_timm()
    if timm is None:
        echo(f"timm Mixup comparison skipped: {note}")
        return []
    if note:
        echo(f"note: {note}")
    from timm.data import Mixup as TimmMixup

    from lossmix_ext.integrations.timm import Mixup

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=dev, generator=g)
    target = torch.randint(0, 1000, (batch,), device=dev, generator=g)
    rows = []
    for mode in modes:
        kw = dict(mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode, label_smoothing=0.1, num_classes=1000)
        fns = {"ours": (lambda m=Mixup(**kw): m(x, target)), "timm": (lambda m=TimmMixup(**kw): m(x, target))}
        samples = {"ours": [], "timm": []}
        ratios = []
        for r in range(warmup + rounds):
            order = ["ours", "timm"] if r % 2 == 0 else ["timm", "ours"]
            got = {k: _timed(fns[k], dev) for k in order}
            if r >= warmup:
                for k, v in got.items():
                    samples[k].append(v)
                ratios.append(got["timm"] / got["ours"])
        qs = statistics.quantiles(ratios, n=5)
        rows.append(MixupRow(mode, batch, f"3x{size}x{size}", dev.type, statistics.median(samples["ours"]) * 1e3,
                             statistics.median(samples["timm"]) * 1e3, statistics.median(ratios), qs[0], qs[-1],
                             GOALS.get(mode) if dev.type == "cpu" and batch == 128 and size == 224 else None,
                             rounds))
    echo(format_table(rows, timm.__version__))
    if out is not None:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "timm_mixup.csv")
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["mode", "B", "image", "device", "ours_ms", "timm_ms", "speedup", "speedup_p20",
                        "speedup_p80", "goal", "ok", "rounds", "torch", "timm", "threads"])
            for r in rows:
                w.writerow([r.mode, r.batch, r.shape, r.device, f"{r.ours_ms:.3f}", f"{r.timm_ms:.3f}",
                            f"{r.speedup:.2f}", f"{r.speedup_p20:.2f}", f"{r.speedup_p80:.2f}",
                            "" if r.goal is None else r.goal, "" if r.ok is None else r.ok, r.rounds,
                            torch.__version__, timm.__version__, torch.get_num_threads()])
        echo(f"wrote {path}")
    return rows


def format_table(rows: Sequence[MixupRow], timm_version: str = "") -> str:
    lines = [f"timm Mixup (timm {timm_version}) vs lossmix_ext.integrations.timm.Mixup: x, soft = mixup_fn(x, y), "
             "ms per call (medians), speed-up = timm / ours",
             f"{'mode':<7}{'B':>5}{'image':>12}{'ours ms':>10}{'timm ms':>10}{'speed-up':>10}{'p20-p80':>13}"
             f"{'goal':>7}  ok"]
    for r in rows:
        goal = "" if r.goal is None else f"{r.goal:.0f}x"
        ok = "" if r.ok is None else ("yes" if r.ok else "NO")
        lines.append(f"{r.mode:<7}{r.batch:>5}{r.shape:>12}{r.ours_ms:>10.2f}{r.timm_ms:>10.2f}{r.speedup:>9.1f}x"
                     f"{r.speedup_p20:>6.1f}-{r.speedup_p80:<6.1f}{goal:>6}  {ok}")
    return "\n".join(lines)
