"""The ``cpu`` backend in float32, bfloat16 and float16, side by side in one run::

    python -m benchmarks.half_precision [--rounds 15] [--threads 1 2] [--out FILE]

Seesaw forward + backward at N = 4096, C = 1204 (the ``SeesawLoss`` module's C + 2 columns are
not needed for this: ``seesaw_loss`` over C classes), and at N = 256 where the logits and the
gradient stay in the L2 cache (so the ratio there is the conversions' compute alone), and image
mixing at B = 64, 3×224×224
(``mix_images`` out of place and ``mix_images_`` in place; uint8 into each dtype too), for both
instruction-set builds of the kernels (AVX2+FMA+F16C and the baseline). Every round times the
dtypes of a case interleaved (alternating order), so the ratios to float32 are per round;
medians and p20–p80 are reported.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from typing import Callable, Dict, List

import torch

from .timing import percentile, run_echoing, wall_seconds

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _cases(g: torch.Generator) -> Dict[str, Dict[str, Callable[[], object]]]:
    import lossmix_ext as L
    n, c = 4096, 1204
    logits = torch.randn(n, c, generator=g) * 2
    labels = torch.randint(0, c, (n,), generator=g)
    counts = (20000.0 * (torch.randperm(c, generator=g).double() + 1).pow(-1.2)).floor().clamp(min=1).float()
    images = torch.randn(64, 3, 224, 224, generator=g)
    u8 = torch.randint(0, 256, (64, 3, 224, 224), generator=g, dtype=torch.uint8)
    lam = torch.rand(64, generator=g)
    index = torch.randperm(64, generator=g)
    pairs = torch.arange(63, -1, -1)
    x = {k: logits.to(d).clone().requires_grad_() for k, d in DTYPES.items()}  # leaves of their own
    xs = {k: logits[:256].to(d).clone().requires_grad_() for k, d in DTYPES.items()}
    imgs = {k: images.to(d) for k, d in DTYPES.items()}

    half = torch.tensor(0.5)

    def seesaw(k, upstream=None, rows=x, lab=labels):
        def run():
            rows[k].grad = None
            L.seesaw_loss(rows[k], lab, counts, backend="cpu").backward(upstream)
        return run

    return {
        "seesaw_loss fwd+bwd N=4096 C=1204": {k: seesaw(k) for k in DTYPES},
        "seesaw_loss fwd+bwd, upstream gradient 0.5 (the saved gradient scaled)": {k: seesaw(k, half) for k in DTYPES},
        "seesaw_loss fwd+bwd N=256 C=1204 (rows stay in L2)": {k: seesaw(k, rows=xs, lab=labels[:256])
                                                              for k in DTYPES},
        "mix_images B=64 3x224x224": {k: (lambda k=k: L.mix_images(imgs[k], lam, index, backend="cpu"))
                                      for k in DTYPES},
        "mix_images uint8 -> dtype, normalised": {
            k: (lambda d=d: L.mix_images(u8, lam, index, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                         out_dtype=d, backend="cpu")) for k, d in DTYPES.items()},
        "mix_images_ in place (pairs)": {k: (lambda k=k: L.mix_images_(imgs[k], lam, pairs, backend="cpu"))
                                         for k in DTYPES},
    }


def run(rounds: int = 15, threads=(1, 2), echo: Callable[[str], None] = print) -> Dict[str, float]:
    import lossmix_ext._C as C
    results: Dict[str, float] = {}
    isas = [i for i in ("avx2", "baseline") if i in C.cpu_isas().split(",")]
    cases = _cases(torch.Generator().manual_seed(0))
    prev_threads = torch.get_num_threads()
    echo(f"cpu backend, float32 vs bfloat16 vs float16, {rounds} interleaved rounds; torch {torch.__version__}; "
         f"kernel builds: {', '.join(isas)}")
    dev = torch.device("cpu")
    try:
        for isa in isas:
            C.set_cpu_isa(isa)
            for nt in threads:
                torch.set_num_threads(nt)
                echo(f"\n== {isa}, {nt} thread(s): median ms (p20-p80), and the per-round ratio to float32 ==")
                for name, fns in cases.items():
                    times: Dict[str, List[float]] = {k: [] for k in fns}
                    ratios: Dict[str, List[float]] = {k: [] for k in fns if k != "float32"}
                    for r in range(rounds + 1):
                        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
                        got = {k: wall_seconds(fns[k], dev) for k in order}
                        if r == 0:
                            continue  # warm-up
                        for k, v in got.items():
                            times[k].append(v * 1e3)
                        for k in ratios:
                            ratios[k].append(got[k] / got["float32"])
                    echo(f"{name}")
                    for k, v in times.items():
                        line = (f"  {k:<9} {statistics.median(v):8.2f} ms ({percentile(v, 20):.2f}-"
                                f"{percentile(v, 80):.2f})")
                        if k in ratios:
                            q = ratios[k]
                            line += (f"   {statistics.median(q):.2f}x float32 "
                                     f"({percentile(q, 20):.2f}-{percentile(q, 80):.2f})")
                            results[f"{isa}/{nt}/{name}/{k}"] = statistics.median(q)
                        echo(line)
    finally:
        C.set_cpu_isa("auto")
        torch.set_num_threads(prev_threads)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.half_precision", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", help="also write the console output to this file")
    args = ap.parse_args(argv)
    run_echoing(lambda e: run(args.rounds, tuple(args.threads), e), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
