"""The portable ``torch`` backend (the default on mps, xpu, ROCm without Triton, and wherever the
native build failed) against the eager reference, side by side in one run::

    python -m benchmarks.torch_backend [--rounds 15] [--out FILE]

* time: Seesaw fwd+bwd and fwd at N = 4096, C = 1204 (float32), the two providers interleaved
  round by round; medians and p20–p80 of the per-round times and of the per-round ratios;
* memory: the torch backend's peak resident memory at N = 64, C = 70000 (fwd + bwd), measured in
  a child process (Linux: the peak ``VmHWM`` is reset through ``/proc/self/clear_refs`` once the
  inputs exist, and read after the call); the reference is not run there: its C×C mitigation
  matrix alone is C²·4 bytes (19.6 GB), stated instead.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from typing import Callable, Dict, List

import torch

from .timing import percentile, run_echoing, wall_seconds

N, C = 4096, 1204
BIG_N, BIG_C = 64, 70000

MEMORY_CHILD = r"""
import torch, lossmix_ext as L

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

n, c = {n}, {c}
g = torch.Generator().manual_seed(0)
x = (torch.randn(n, c, generator=g) * 2).requires_grad_()
y = torch.randint(0, c, (n,), generator=g)
counts = torch.randint(0, 5000, (c,), generator=g).float()
L.seesaw_loss(x[:2], y[:2], counts, backend="torch").backward()  # first-call set-up out of the way
x.grad = None
with open("/proc/self/clear_refs", "w") as f:  # Linux: the peak resident size starts again from now
    f.write("5")
before = status("VmRSS")
L.seesaw_loss(x, y, counts, backend="torch").backward()
print("PEAK_KB", status("VmHWM") - before, "INPUT_KB", (x.numel() * 4) // 1024)
"""


def _inputs(g: torch.Generator):
    import lossmix_ext  # noqa: F401
    x = (torch.randn(N, C, generator=g) * 2).requires_grad_()
    y = torch.randint(0, C, (N,), generator=g)
    rank = torch.randperm(C, generator=g).double() + 1
    counts = (20000.0 * rank.pow(-1.2)).floor().clamp(min=1).float()
    return x, y, counts


def run(rounds: int = 15, echo: Callable[[str], None] = print) -> Dict[str, object]:
    import lossmix_ext as L
    from lossmix_ext import _reference as R
    torch.manual_seed(0)
    x, y, counts = _inputs(torch.Generator().manual_seed(0))
    cases = {
        "fwd+bwd": {"reference": lambda: R.seesaw_loss(x, y, counts).backward(),
                    "torch": lambda: L.seesaw_loss(x, y, counts, backend="torch").backward()},
        "fwd": {"reference": lambda: R.seesaw_loss(x, y, counts),
                "torch": lambda: L.seesaw_loss(x, y, counts, backend="torch")},
    }
    dev = torch.device("cpu")
    echo(f"torch backend vs the eager reference, Seesaw N={N} C={C} float32, {rounds} interleaved rounds, "
         f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    result: Dict[str, object] = {}
    for mode, fns in cases.items():
        times: Dict[str, List[float]] = {k: [] for k in fns}
        ratios: List[float] = []
        with torch.no_grad() if mode == "fwd" else torch.enable_grad():
            for r in range(rounds + 1):
                order = list(fns) if r % 2 == 0 else list(fns)[::-1]
                got = {k: wall_seconds(fns[k], dev) for k in order}
                x.grad = None
                if r == 0:
                    continue  # warm-up
                for k, v in got.items():
                    times[k].append(v * 1e3)
                ratios.append(got["reference"] / got["torch"])
        for k, v in times.items():
            echo(f"  {mode:<8}{k:<10} median {statistics.median(v):8.2f} ms  "
                 f"(p20 {percentile(v, 20):.2f}, p80 {percentile(v, 80):.2f})")
        echo(f"  {mode:<8}torch backend {statistics.median(ratios):.2f}x faster than the reference "
             f"(per-round ratios p20 {percentile(ratios, 20):.2f}, p80 {percentile(ratios, 80):.2f})")
        result[mode] = statistics.median(ratios)
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD.format(n=BIG_N, c=BIG_C)], capture_output=True,
                         text=True, timeout=600)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("PEAK_KB")), None)
    if line is None:
        echo(f"  memory check failed: {out.stderr[-500:]}")
    else:
        peak_kb, input_kb = int(line.split()[1]), int(line.split()[3])
        echo(f"  N={BIG_N} C={BIG_C} fwd+bwd: torch backend peak resident memory {peak_kb / 2**20:.3f} GiB above its "
             f"inputs ({input_kb / 1024:.1f} MiB of logits); the reference's C x C matrix alone would be "
             f"{BIG_C * BIG_C * 4 / 1e9:.1f} GB (not run)")
        result["peak_gib"] = peak_kb / 2**20
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.torch_backend", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", help="also write the console output to this file")
    args = ap.parse_args(argv)
    run_echoing(lambda e: run(args.rounds, e), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
