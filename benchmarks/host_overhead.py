"""Host overhead: the per-call cost of the public API at training shapes, against the plain
PyTorch op a user would otherwise call.

At the shapes a detector or classifier calls a loss with (N of 8 to 512 rows), a GPU kernel
takes a few microseconds and the call's Python, dispatch and autograd work is the runtime. This
group measures it: forward + backward of a scalar loss, one thread, each provider called
``inner`` times back to back per sample, providers interleaved round by round (the starting
provider rotates), medians over the rounds. Reported: µs per call and the ratio to the plain op
measured side by side in the same run (the median over rounds of each round's ratio, with its
20th-80th percentiles), with the goal the ratio must stay under.

The goals (issue "a lean host path"):

===================================  =====================================================  ====
lossmix_ext call                     plain PyTorch op                                       goal
===================================  =====================================================  ====
``seesaw_loss(x, y, counts)``        ``F.cross_entropy(x, y)``                              2×
``SeesawLoss(x, y)`` (count + both)  ``F.cross_entropy`` over the C+2 logits                3×
``mixed_cross_entropy(x, a, b, λ)``  ``λ·F.cross_entropy(x, a) + (1−λ)·F.cross_entropy(x, b)``  1.5×
``lossmix_reduce(a, b, λ)``          ``(λ·a + (1−λ)·b).mean()``                             1.5×
===================================  =====================================================  ====
"""
from __future__ import annotations

import csv
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import lossmix_ext

SHAPES: Tuple[Tuple[int, int], ...] = ((8, 10), (512, 81))


@dataclass
class HostCase:
    name: str            # what lossmix_ext call is timed
    plain: str           # what it is compared with
    n: int
    c: int
    goal: float          # the ratio must stay at or under this
    ours: Callable[[], None]
    base: Callable[[], None]
    check: Optional[Callable[[], None]] = None  # raises when the two disagree


@dataclass
class HostRow:
    case: str
    plain: str
    n: int
    c: int
    device: str
    ours_us: float
    plain_us: float
    ratio: float
    ratio_p20: float
    ratio_p80: float
    goal: float
    rounds: int

    @property
    def ok(self) -> bool:
        return self.ratio <= self.goal


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(True)


def cases(device: torch.device, shapes: Sequence[Tuple[int, int]] = SHAPES, seed: int = 0) -> List[HostCase]:
    out: List[HostCase] = []
    for n, c in shapes:
        g = torch.Generator().manual_seed(seed)
        x = _leaf(torch.randn(n, c, generator=g).to(device))
        y = torch.randint(0, c, (n,), generator=g).to(device)
        yb = torch.randint(0, c, (n,), generator=g).to(device)
        counts = (torch.rand(c, generator=g) * 100).to(device)
        xm = _leaf(torch.randn(n, c + 2, generator=g).to(device))
        ym = torch.randint(0, c + 1, (n,), generator=g).to(device)
        module = lossmix_ext.SeesawLoss(num_classes=c).to(device)
        lam = 0.3
        la = _leaf(torch.rand(n, generator=g).to(device))
        lb = _leaf(torch.rand(n, generator=g).to(device))
        lv = torch.rand(n, generator=g).to(device)

        def seesaw(x=x, y=y, counts=counts):
            lossmix_ext.seesaw_loss(x, y, counts).backward()

        def ce(x=x, y=y):
            F.cross_entropy(x, y).backward()

        def seesaw_module(xm=xm, ym=ym, module=module):
            out = module(xm, ym)
            (out["loss_cls_objectness"] + out["loss_cls_classes"]).backward()

        def ce_ct(xm=xm, ym=ym):
            F.cross_entropy(xm, ym).backward()

        def mixed(x=x, y=y, yb=yb):
            lossmix_ext.mixed_cross_entropy(x, y, yb, lam).backward()

        def two_ce(x=x, y=y, yb=yb):
            (lam * F.cross_entropy(x, y) + (1 - lam) * F.cross_entropy(x, yb)).backward()

        def reduce(la=la, lb=lb, lv=lv):
            lossmix_ext.lossmix_reduce(la, lb, lv).backward()

        def formula(la=la, lb=lb, lv=lv):
            (lv * la + (1 - lv) * lb).mean().backward()

        def check_mixed(x=x, y=y, yb=yb):
            with torch.no_grad():
                torch.testing.assert_close(lossmix_ext.mixed_cross_entropy(x, y, yb, lam),
                                           lam * F.cross_entropy(x, y) + (1 - lam) * F.cross_entropy(x, yb))

        def check_reduce(la=la, lb=lb, lv=lv):
            with torch.no_grad():
                torch.testing.assert_close(lossmix_ext.lossmix_reduce(la, lb, lv), (lv * la + (1 - lv) * lb).mean())

        out += [
            HostCase("seesaw_loss", "F.cross_entropy", n, c, 2.0, seesaw, ce),
            HostCase("SeesawLoss module", "F.cross_entropy over C+2", n, c, 3.0, seesaw_module, ce_ct),
            HostCase("mixed_cross_entropy", "λ·CE(y_a) + (1−λ)·CE(y_b)", n, c, 1.5, mixed, two_ce, check_mixed),
            HostCase("lossmix_reduce", "(λ·a + (1−λ)·b).mean()", n, c, 1.5, reduce, formula, check_reduce),
        ]
    return out


def _time_block(fn: Callable[[], None], inner: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / inner


def measure(case: HostCase, device: torch.device, rounds: int = 31, inner: int = 50,
            warmup: int = 3) -> HostRow:
    """Both providers, ``rounds`` interleaved samples of ``inner`` calls each (after ``warmup``)."""
    if case.check is not None:
        case.check()
    fns = {"ours": case.ours, "plain": case.base}
    samples: Dict[str, List[float]] = {"ours": [], "plain": []}
    ratios: List[float] = []
    for r in range(warmup + rounds):
        order = ["ours", "plain"] if r % 2 == 0 else ["plain", "ours"]
        got = {k: _time_block(fns[k], inner, device) for k in order}
        if r >= warmup:
            for k, v in got.items():
                samples[k].append(v)
            ratios.append(got["ours"] / got["plain"])
    ours, plain = statistics.median(samples["ours"]), statistics.median(samples["plain"])
    qs = statistics.quantiles(ratios, n=5)
    # the ratio of each round (both measured back to back) is robust to the machine's drift
    return HostRow(case.name, case.plain, case.n, case.c, device.type, ours * 1e6, plain * 1e6,
                   statistics.median(ratios), qs[0], qs[-1], case.goal, rounds)


def run(device: Optional[str] = None, out: Optional[str] = None, rounds: int = 31, inner: int = 50,
        shapes: Sequence[Tuple[int, int]] = SHAPES, echo: Callable[[str], None] = print) -> List[HostRow]:
    """Measure every case on one thread; print the table and write ``host_overhead.csv`` to ``out``."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = [measure(c, dev, rounds, inner) for c in cases(dev, shapes)]
    finally:
        torch.set_num_threads(threads)
    echo(format_table(rows))
    if out is not None:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "host_overhead.csv")
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", "plain", "N", "C", "device", "ours_us", "plain_us", "ratio", "ratio_p20", "ratio_p80",
                        "goal", "ok", "rounds", "inner", "torch"])
            for r in rows:
                w.writerow([r.case, r.plain, r.n, r.c, r.device, f"{r.ours_us:.2f}", f"{r.plain_us:.2f}",
                            f"{r.ratio:.3f}", f"{r.ratio_p20:.3f}", f"{r.ratio_p80:.3f}", r.goal, r.ok, r.rounds,
                            inner, torch.__version__])
        echo(f"wrote {path}")
    return rows


def format_table(rows: Sequence[HostRow]) -> str:
    lines = ["host overhead: fwd+bwd of a scalar loss, one thread, µs per call (medians), ratio to the plain op",
             f"{'call':<22}{'N':>5}{'C':>5}{'µs':>9}{'plain':>28}{'µs':>9}{'ratio':>8}{'p20-p80':>13}{'goal':>7}  ok"]
    for r in rows:
        lines.append(f"{r.case:<22}{r.n:>5}{r.c:>5}{r.ours_us:>9.1f}{r.plain:>28}{r.plain_us:>9.1f}{r.ratio:>7.2f}x"
                     f"{r.ratio_p20:>6.2f}-{r.ratio_p80:<5.2f}{r.goal:>6.1f}x  {'yes' if r.ok else 'NO'}")
    return "\n".join(lines)


if __name__ == "__main__":
    run()
