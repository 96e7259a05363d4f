"""Training-step time of the torchvision plug-in against plain ``model(images, targets)``, side by side.

``python -m benchmarks.torchvision_detection [--batch 4] [--size 160] [--rounds 7] [--out FILE]``

One torchvision ``fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)``
(its defaults: images resized to 320 on the short side, torchvision's random samplers), a
batch of B random images of size×size with 1–3 boxes each, on the CPU (or ``--device cuda``).
Each step is forward + backward (gradients zeroed first). Per round, every variant runs once,
in a rotating order; reported are the medians over the rounds and each variant's median ratio
to the plain step of the same round:

* ``model(images, targets)`` — the plain step (no mixing);
* ``lossmix_detection_losses`` with a (B,) λ — the plug-in (backbone once, both target sets);
* ``λ·model(images, targets) + (1−λ)·model(images, targets[index])`` — LossMix by calling the
  model twice (backbone twice), the baseline the plug-in replaces;
* the same model after ``seesaw_fast_rcnn``: its own ``model(images, targets)`` and the plug-in.

Needs torchvision whose compiled ops run next to the installed torch.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
from typing import Callable, Dict, List

import torch

from .frameworks import torchvision_detection_status
from .timing import wall_seconds


def _batch(b: int, size: int, classes: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i in range(b):
        images.append(torch.rand(3, size, size, generator=g).to(device))
        k = 1 + i % 3
        xy = torch.rand(k, 2, generator=g) * size * 0.6
        wh = size * (0.1 + 0.3 * torch.rand(k, 2, generator=g))
        boxes = torch.cat([xy, torch.clamp(xy + wh, max=size - 1.0)], 1)
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(1, classes + 1, (k,), generator=g).to(device)})
    return images, targets


def run(batch: int = 4, size: int = 160, rounds: int = 7, warmup: int = 1, classes: int = 20, device: str = "cpu",
        threads: int = 0) -> str:
    status = torchvision_detection_status()
    if status != "ok":
        return f"skipped: torchvision detection models cannot run here ({status})"
    import torchvision
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    from lossmix_ext.integrations.torchvision import lossmix_detection_losses, seesaw_fast_rcnn

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    torch.manual_seed(0)
    plain = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None,
                                                  num_classes=classes + 1).to(dev).train()
    seesaw = seesaw_fast_rcnn(copy.deepcopy(plain))
    images, targets = _batch(batch, size, classes, dev)
    index = torch.roll(torch.arange(batch, device=dev), 1)
    lam = torch.linspace(0.2, 0.8, batch, device=dev)
    lam_number = 0.6
    partners = [targets[j] for j in index.tolist()]

    def step(model, losses_fn: Callable[[], Dict[str, torch.Tensor]]) -> Callable[[], None]:
        def go():
            model.zero_grad(set_to_none=True)
            sum(losses_fn().values()).backward()
        return go

    def naive():
        a, b = plain(images, targets), plain(images, partners)
        return {k: lam_number * a[k] + (1 - lam_number) * b[k] for k in a}

    variants = {
        "model(images, targets)": step(plain, lambda: plain(images, targets)),
        "plug-in, (B,) λ": step(plain, lambda: lossmix_detection_losses(plain, images, targets, index, lam)),
        "two model calls, λ·L_a + (1−λ)·L_b": step(plain, naive),
        "Seesaw model(images, targets)": step(seesaw, lambda: seesaw(images, targets)),
        "Seesaw plug-in, (B,) λ": step(seesaw, lambda: lossmix_detection_losses(seesaw, images, targets, index, lam)),
    }
    names = list(variants)
    times: Dict[str, List[float]] = {n: [] for n in names}
    ratios: Dict[str, List[float]] = {n: [] for n in names}

    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        this = {n: wall_seconds(variants[n], dev) for n in order}
        if r >= warmup:
            for n in names:
                times[n].append(this[n])
                ratios[n].append(this[n] / this[names[0]])
    lines = [f"torchvision {torchvision.__version__}, torch {torch.__version__}, {dev} "
             f"({torch.get_num_threads()} threads); fasterrcnn_mobilenet_v3_large_320_fpn, {classes} classes, "
             f"B={batch}, {size}x{size} images (resized to 320 by the model), forward + backward, "
             f"{rounds} rounds (+{warmup} warm-up), medians",
             f"{'step':<36} {'s / step':>9} {'vs plain (p20-p80)':>22}"]
    for n in names:
        rs = sorted(ratios[n])
        p20, p80 = rs[int(0.2 * (len(rs) - 1))], rs[int(round(0.8 * (len(rs) - 1)))]
        lines.append(f"{n:<36} {statistics.median(times[n]):>9.3f} "
                     f"{statistics.median(ratios[n]):>8.2f}x ({p20:.2f}-{p80:.2f})")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.torchvision_detection", description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    ap.add_argument("--out", help="also write the table to this file")
    args = ap.parse_args(argv)
    text = run(args.batch, args.size, args.rounds, args.warmup, args.classes, args.device, args.threads)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
