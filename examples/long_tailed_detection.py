"""Long-tailed detection: Seesaw and LossMix inside torchvision's Faster R-CNN, on a CPU.

What it shows
-------------
A synthetic detection set is drawn once (``--data-seed``): 10 classes of flat shapes (square,
disc, ring, triangle, cross, horizontal and vertical bars, diamond, frame, X) in random colours
and sizes, pasted without overlap on 96×96 noise, 1-3 per image. The training set is
long-tailed with an exponential profile, ``n_c = round(n_max · ratio^(−c/(C−1)))`` instances of
class c (ratio 50: class 0 keeps the most, class 9 the fewest); the test set is balanced (the
same number of instances of every class). The same small Faster R-CNN (torchvision's
``FasterRCNN`` with a four-layer convolutional backbone, one feature map, a 256-wide box head;
trained from scratch), optimiser, schedule, steps and seeds train with four recipes:

* ``plain``          -- ``model(images, targets)``: torchvision's losses (softmax CE over C+1);
* ``seesaw``         -- ``lossmix_ext.integrations.torchvision.seesaw_fast_rcnn(model)``: C+2
  normalised-linear class layer and the fused Seesaw loss (p = 0.8, q = 2.0), mmdetection's recipe;
* ``lossmix``        -- each batch mixed with ``lossmix_ext.LossMix(alpha=1.0)`` (λ ~ Beta(1, 1) per
  image, random partner) by ``mix_detection_batch``, the losses ``λ·L(x̃, y_a) + (1−λ)·L(x̃, y_b)``
  from ``lossmix_detection_losses``;
* ``seesaw+lossmix`` -- both;
* ``c+2-head``       -- the ``seesaw`` recipe's head and loss layout with both Seesaw factors off
  (p = q = 0: the normalised C+2 layer, C-way CE on foreground proposals + 2-way objectness),
  which separates what the mitigation / compensation factors do from what the layer does.

Evaluation: COCO box mAP (IoU 0.50:0.95), AP50, and the mean AP of the three rarest classes,
computed by torchmetrics' ``MeanAveragePrecision`` (pycocotools backend) -- a maintained
implementation, not one written here. The numbers are whatever they turn out to be: nothing is
tuned per recipe, the training is a few CPU minutes, and with this little training the
differences between recipes can be within the seeds' spread (the summary says so when they are).

Run
---
    python examples/long_tailed_detection.py                 # 3 seeds, 4 recipes (about 1 h on 2 CPU cores)
    python examples/long_tailed_detection.py --seeds 1 --out results_dir   # about 20 min
    python examples/long_tailed_detection.py --smoke         # tiny: checks the pipeline in seconds

Needs torchvision with working detection ops (``nms``, ``roi_align``: a torchvision built for
the installed torch), torchmetrics and pycocotools; matplotlib for the plot. Outputs (in
``--out``, by default a new temporary folder): ``results.csv``, ``summary.md``, ``ap.png``.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

import lossmix_ext as L

CLASSES = ["square", "disc", "ring", "triangle", "cross", "bar_h", "bar_v", "diamond", "frame", "x"]
NUM_CLASSES = len(CLASSES)
IMBALANCE_RATIO = 50.0
RECIPES = ("plain", "c+2-head", "seesaw", "lossmix", "seesaw+lossmix")
TAIL = 3  # the rarest classes reported as "tail AP"


@dataclass(frozen=True)
class Config:
    n_max: int = 400            # training instances of the most frequent class
    test_per_class: int = 24    # balanced test set
    image_size: int = 96
    min_obj: int = 14
    max_obj: int = 30
    batch: int = 8
    steps: int = 400
    lr: float = 0.02
    warmup: int = 50
    seeds: int = 3
    data_seed: int = 1234
    threads: Optional[int] = None


# ----------------------------------------------------------------------------------- the data
def long_tailed_counts(n_max: int, ratio: float, num_classes: int = NUM_CLASSES) -> List[int]:
    return [max(1, round(n_max * ratio ** (-c / (num_classes - 1)))) for c in range(num_classes)]


def shape_mask(cls: int, h: int, w: int) -> torch.Tensor:
    """A (h, w) float mask of class ``cls``'s shape, drawn in pixel-centre coordinates on
    [-1, 1]² (the box given to the detector is the mask's own extent: see ``draw_set``)."""
    y = ((torch.arange(h) + 0.5) / h * 2 - 1).view(h, 1).expand(h, w)
    x = ((torch.arange(w) + 0.5) / w * 2 - 1).view(1, w).expand(h, w)
    r = (x * x + y * y).sqrt()
    name = CLASSES[cls]
    if name == "square":
        m = torch.ones(h, w, dtype=torch.bool)
    elif name == "disc":
        m = r <= 1.0
    elif name == "ring":
        m = (r <= 1.0) & (r >= 0.55)
    elif name == "triangle":
        m = x.abs() <= (y + 1) / 2
    elif name == "cross":
        m = (x.abs() <= 0.3) | (y.abs() <= 0.3)
    elif name == "bar_h":
        m = (y.abs() <= 0.35) | (x.abs() >= 0.85)
    elif name == "bar_v":
        m = (x.abs() <= 0.35) | (y.abs() >= 0.85)
    elif name == "diamond":
        m = x.abs() + y.abs() <= 1.0
    elif name == "frame":
        m = (x.abs() >= 0.65) | (y.abs() >= 0.65)
    else:  # "x"
        m = ((x - y).abs() <= 0.35) | ((x + y).abs() <= 0.35)
    return m.float()


def _iou_free(box: Tuple[int, int, int, int], boxes: List[Tuple[int, int, int, int]], gap: int = 2) -> bool:
    x0, y0, x1, y1 = box
    return all(x1 + gap <= a0 or a1 + gap <= x0 or y1 + gap <= b0 or b1 + gap <= y0 for a0, b0, a1, b1 in boxes)


def draw_set(instances: List[int], cfg: Config, g: torch.Generator) -> List[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]:
    """Images (3, S, S) uint8 and torchvision targets (labels 1..C) holding ``instances`` (class
    ids), 1-3 per image, shuffled, without overlap."""
    S = cfg.image_size
    order = torch.randperm(len(instances), generator=g).tolist()
    todo = [instances[i] for i in order]
    out = []
    while todo:
        k = min(len(todo), int(torch.randint(1, 4, (1,), generator=g)))
        img = torch.rand(3, S, S, generator=g) * 0.45 + torch.rand(3, 1, 1, generator=g) * 0.1
        boxes: List[Tuple[int, int, int, int]] = []
        labels: List[int] = []
        here, todo = todo[:k], todo[k:]
        left = []  # instances that found no room: they go to a later image
        for cls in here:
            for _ in range(50):
                h = int(torch.randint(cfg.min_obj, cfg.max_obj + 1, (1,), generator=g))
                w = int(torch.randint(cfg.min_obj, cfg.max_obj + 1, (1,), generator=g))
                x0 = int(torch.randint(0, S - w + 1, (1,), generator=g))
                y0 = int(torch.randint(0, S - h + 1, (1,), generator=g))
                if _iou_free((x0, y0, x0 + w, y0 + h), boxes):
                    break
            else:
                left.append(cls)
                continue
            colour = torch.rand(3, 1, 1, generator=g) * 0.5 + 0.5
            m = shape_mask(cls, h, w)
            patch = img[:, y0:y0 + h, x0:x0 + w]
            img[:, y0:y0 + h, x0:x0 + w] = patch * (1 - m) + colour * m
            rows, cols = m.any(1).nonzero().view(-1), m.any(0).nonzero().view(-1)  # the tight box
            boxes.append((x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1))
            labels.append(cls + 1)
        todo = left + todo
        if not labels:
            continue
        target = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.int64)}
        out.append(((img.clamp(0, 1) * 255).round().to(torch.uint8), target))
    return out


@dataclass
class DataSet:
    train: List[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]
    test: List[Tuple[torch.Tensor, Dict[str, torch.Tensor]]]

    @staticmethod
    def counts(items) -> List[int]:
        c = [0] * NUM_CLASSES
        for _, t in items:
            for v in t["labels"].tolist():
                c[v - 1] += 1
        return c


def make_data(cfg: Config) -> DataSet:
    g = torch.Generator().manual_seed(cfg.data_seed)
    train = [c for c, n in enumerate(long_tailed_counts(cfg.n_max, IMBALANCE_RATIO)) for _ in range(n)]
    test = [c for c in range(NUM_CLASSES) for _ in range(cfg.test_per_class)]
    return DataSet(draw_set(train, cfg, g), draw_set(test, cfg, g))


# ---------------------------------------------------------------------------------- the model
def make_model(recipe: str, cfg: Config, seed: int) -> nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(seed)

    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    backbone = nn.Sequential(*block(3, 32, 2), *block(32, 64, 2), *block(64, 96, 2), *block(96, 128, 1))
    backbone.out_channels = 128
    model = FasterRCNN(
        backbone, num_classes=None, min_size=cfg.image_size, max_size=cfg.image_size,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25],
        rpn_anchor_generator=AnchorGenerator(sizes=((12, 20, 32),), aspect_ratios=((0.5, 1.0, 2.0),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        box_head=TwoMLPHead(128 * 7 * 7, 256), box_predictor=FastRCNNPredictor(256, NUM_CLASSES + 1),
        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150, rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=150, box_batch_size_per_image=64, box_detections_per_img=30,
        box_score_thresh=0.01)
    if "seesaw" in recipe or recipe == "c+2-head":
        from lossmix_ext.integrations.torchvision import seesaw_fast_rcnn
        off = recipe == "c+2-head"
        seesaw_fast_rcnn(model, p=0.0 if off else 0.8, q=0.0 if off else 2.0)
    return model


def batches(n: int, cfg: Config, g: torch.Generator):
    """Endless shuffled batches of indices (epochs of a random permutation)."""
    while True:
        perm = torch.randperm(n, generator=g).tolist()
        for i in range(0, n - cfg.batch + 1, cfg.batch):
            yield perm[i:i + cfg.batch]


def train_step(model, recipe: str, items, mixer: Optional[L.LossMix]) -> Dict[str, torch.Tensor]:
    from lossmix_ext.integrations.torchvision import mix_detection_batch

    images = [img for img, _ in items]
    targets = [t for _, t in items]
    if "lossmix" in recipe:
        batch = mix_detection_batch(images, targets, mixer.sample(len(images)))
        return batch.losses(model)
    return model([img.float() / 255 for img in images], targets)


@dataclass
class RunResult:
    recipe: str
    seed: int
    map: float
    map50: float
    tail_ap: float
    head_ap: float
    per_class: List[float]
    final_loss: float
    seconds: float


@torch.no_grad()
def evaluate(model, test, cfg: Config) -> Tuple[float, float, List[float]]:
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="bbox", class_metrics=True)
    model.eval()
    for i in range(0, len(test), 16):
        chunk = test[i:i + 16]
        preds = model([img.float() / 255 for img, _ in chunk])
        metric.update([{k: p[k] for k in ("boxes", "scores", "labels")} for p in preds], [t for _, t in chunk])
    res = metric.compute()
    per = {int(c): float(a) for c, a in zip(res["classes"].reshape(-1).tolist(), res["map_per_class"].reshape(-1).tolist())}
    # classes absent from both predictions and targets are reported -1 by COCO: count them as 0 AP
    per_class = [max(0.0, per.get(c + 1, 0.0)) for c in range(NUM_CLASSES)]
    return float(res["map"]), float(res["map_50"]), per_class


def train_run(data: DataSet, recipe: str, seed: int, cfg: Config, log=print) -> RunResult:
    model = make_model(recipe, cfg, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    mixer = L.LossMix(alpha=1.0, generator=torch.Generator().manual_seed(seed + 7)) if "lossmix" in recipe else None
    torch.manual_seed(seed)  # torchvision's samplers draw from the global generator
    it = batches(len(data.train), cfg, g)
    model.train()
    start, recent = time.perf_counter(), []
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * (0.1 if step >= int(0.8 * cfg.steps) else 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        losses = train_step(model, recipe, [data.train[i] for i in next(it)], mixer)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{recipe} seed {seed}: non-finite loss at step {step}: {losses}")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        recent = (recent + [float(loss.detach())])[-20:]
        if (step + 1) % max(1, cfg.steps // 5) == 0:
            log(f"  {recipe:15s} seed {seed} step {step + 1}/{cfg.steps} loss {statistics.mean(recent):.3f} "
                f"({time.perf_counter() - start:.0f} s)")
    seconds = time.perf_counter() - start
    m, m50, per_class = evaluate(model, data.test, cfg)
    head = NUM_CLASSES - TAIL
    return RunResult(recipe, seed, m, m50, statistics.mean(per_class[head:]), statistics.mean(per_class[:head]),
                     per_class, statistics.mean(recent), seconds)


# ---------------------------------------------------------------------------------- reporting
def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def by_recipe(results: Sequence[RunResult]) -> Dict[str, List[RunResult]]:
    return {r: [x for x in results if x.recipe == r] for r in RECIPES if any(x.recipe == r for x in results)}


def read_csv(path: Path) -> List[RunResult]:
    """The runs of an earlier ``results.csv`` (``--resume``)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            out.append(RunResult(r["recipe"], int(r["seed"]), float(r["map"]), float(r["map50"]), float(r["tail_ap"]),
                                 float(r["head_ap"]), [float(r[f"ap_{c}"]) for c in CLASSES], float(r["final_loss"]),
                                 float(r["train_seconds"])))
    return out


def write_csv(path: Path, results: Sequence[RunResult]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["recipe", "seed", "map", "map50", "tail_ap", "head_ap", "final_loss", "train_seconds"]
                   + [f"ap_{c}" for c in CLASSES])
        for r in results:
            w.writerow([r.recipe, r.seed, f"{r.map:.4f}", f"{r.map50:.4f}", f"{r.tail_ap:.4f}", f"{r.head_ap:.4f}",
                        f"{r.final_loss:.4f}", f"{r.seconds:.1f}"] + [f"{a:.4f}" for a in r.per_class])


def conclusions(results: Sequence[RunResult]) -> List[str]:
    groups = by_recipe(results)
    if "plain" not in groups:
        return []
    base_map, base_sd = mean_std([r.map for r in groups["plain"]])
    base_tail, tail_sd = mean_std([r.tail_ap for r in groups["plain"]])
    lines = []
    for name, rs in groups.items():
        if name == "plain":
            continue
        m, sd = mean_std([r.map for r in rs])
        t, tsd = mean_std([r.tail_ap for r in rs])
        spread = max(sd, base_sd)
        tspread = max(tsd, tail_sd)
        verdict = ("within the seeds' spread" if abs(m - base_map) <= spread
                   else ("higher" if m > base_map else "lower"))
        tverdict = ("within the seeds' spread" if abs(t - base_tail) <= tspread
                    else ("higher" if t > base_tail else "lower"))
        lines.append(f"* `{name}` vs `plain`: mAP {m - base_map:+.3f} ({verdict}), tail AP {t - base_tail:+.3f} "
                     f"({tverdict}).")
    if "seesaw" in groups and "c+2-head" in groups:
        m, sd = mean_std([r.map for r in groups["seesaw"]])
        h, hsd = mean_std([r.map for r in groups["c+2-head"]])
        t, _ = mean_std([r.tail_ap for r in groups["seesaw"]])
        ht, _ = mean_std([r.tail_ap for r in groups["c+2-head"]])
        lines.append(f"* `seesaw` vs `c+2-head` (the Seesaw factors alone, same layer): mAP {m - h:+.3f} "
                     f"({'within the seeds' + chr(39) + ' spread' if abs(m - h) <= max(sd, hsd) else 'beyond the spread'}), "
                     f"tail AP {t - ht:+.3f}.")
    if len(next(iter(groups.values()))) < 2:
        lines.append("* One seed only: no spread to compare against; read the differences as anecdotes.")
    return lines


def write_summary(path: Path, data: DataSet, results: Sequence[RunResult], cfg: Config, wall: float) -> None:
    train_c, test_c = DataSet.counts(data.train), DataSet.counts(data.test)
    lines = [
        "# Long-tailed detection: Seesaw and LossMix in torchvision's Faster R-CNN",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} "
        f"threads; torch {torch.__version__}; lossmix_ext backend for the Seesaw loss: "
        f"{'cpu (native)' if L.backend_status('cpu').get('cpu') == 'available' else 'torch'}.",
        f"Data: {len(data.train)} training images ({sum(train_c)} instances, per class {train_c}, "
        f"imbalance {train_c[0] / train_c[-1]:.0f}:1), {len(data.test)} test images ({test_c[0]} instances per "
        f"class); {cfg.image_size}x{cfg.image_size}. Training: {cfg.steps} steps of {cfg.batch} images, SGD "
        f"lr {cfg.lr} (warm-up {cfg.warmup}, x0.1 at 80%), {cfg.seeds} seed(s); {wall / 60:.1f} min in all.",
        "",
        "| recipe | mAP (0.50:0.95) | AP50 | tail AP (3 rarest) | head AP | final train loss | train s / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rs in by_recipe(results).items():
        def ms(vals):
            m, s = mean_std(vals)
            return f"{m:.3f} ± {s:.3f}" if len(vals) > 1 else f"{m:.3f}"
        lines.append(f"| `{name}` | {ms([r.map for r in rs])} | {ms([r.map50 for r in rs])} | "
                     f"{ms([r.tail_ap for r in rs])} | {ms([r.head_ap for r in rs])} | "
                     f"{ms([r.final_loss for r in rs])} | {statistics.mean(r.seconds for r in rs):.0f} |")
    lines += ["", "Per-class AP (mean over seeds), classes from the most to the least frequent:", "",
              "| recipe | " + " | ".join(f"{c} ({n})" for c, n in zip(CLASSES, train_c)) + " |",
              "|---|" + "---|" * NUM_CLASSES]
    for name, rs in by_recipe(results).items():
        per = [statistics.mean(r.per_class[c] for r in rs) for c in range(NUM_CLASSES)]
        lines.append(f"| `{name}` | " + " | ".join(f"{a:.2f}" for a in per) + " |")
    lines += ["", "Conclusions (differences of means; 'within the spread' when no larger than the larger of "
              "the two recipes' standard deviations over seeds):", ""] + conclusions(results)
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, data: DataSet, results: Sequence[RunResult]) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return False
    train_c = DataSet.counts(data.train)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    groups = by_recipe(results)
    xs = range(len(groups))
    for off, key, label in ((-0.2, "map", "mAP"), (0.2, "tail_ap", "tail AP (3 rarest)")):
        vals = [mean_std([getattr(r, key) for r in rs]) for rs in groups.values()]
        a1.bar([x + off for x in xs], [v[0] for v in vals], 0.4, yerr=[v[1] for v in vals], capsize=3, label=label)
    a1.set_xticks(list(xs), list(groups))
    a1.set_ylabel("AP")
    a1.set_title("mean ± std over seeds")
    a1.legend()
    for name, rs in groups.items():
        a2.plot(range(NUM_CLASSES), [statistics.mean(r.per_class[c] for r in rs) for c in range(NUM_CLASSES)],
                marker="o", label=name)
    a2.set_xticks(range(NUM_CLASSES), [f"{c}\n{n}" for c, n in zip(CLASSES, train_c)], fontsize=7)
    a2.set_ylabel("AP (0.50:0.95)")
    a2.set_title("per class (training instances below)")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help=f"training steps per run (default {Config.steps})")
    p.add_argument("--seeds", type=int, default=None, help=f"seeds per recipe (default {Config.seeds})")
    p.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    p.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary folder)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--smoke", action="store_true", help="tiny data, 1 seed, 3 steps: checks the pipeline")
    p.add_argument("--resume", action="store_true",
                   help="keep the runs already in --out's results.csv (same settings) and run only the others")
    return p.parse_args(argv)


def make_config(args: argparse.Namespace) -> Config:
    cfg = Config()
    if args.smoke:
        cfg = replace(cfg, n_max=30, test_per_class=2, steps=3, warmup=2, seeds=1, batch=4)
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.seeds is not None:
        cfg = replace(cfg, seeds=args.seeds)
    return replace(cfg, threads=args.threads)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    cfg = make_config(args)
    from benchmarks.frameworks import torchvision_detection_status  # noqa: E402 (repository root on sys.path)

    status = torchvision_detection_status()
    if status != "ok":
        print(f"torchvision detection models cannot run here: {status}", file=sys.stderr)
        return 2
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="long_tailed_detection-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = make_data(cfg)
    tc = DataSet.counts(data.train)
    print(f"data: {len(data.train)} training images, per class {tc} ({tc[0] / tc[-1]:.0f}:1); "
          f"{len(data.test)} test images")
    results = read_csv(out / "results.csv") if args.resume and (out / "results.csv").exists() else []
    done = {(r.recipe, r.seed) for r in results}
    for seed in range(cfg.seeds):
        for recipe in args.recipes:
            if (recipe, seed) in done:
                continue
            r = train_run(data, recipe, seed, cfg)
            print(f"{recipe:15s} seed {seed}: mAP {r.map:.3f}  AP50 {r.map50:.3f}  tail AP {r.tail_ap:.3f}  "
                  f"({r.seconds:.0f} s)")
            results.append(r)
            write_csv(out / "results.csv", results)
    results.sort(key=lambda r: (r.seed, RECIPES.index(r.recipe)))
    write_csv(out / "results.csv", results)
    wall = time.perf_counter() - t0 + sum(r.seconds for r in results if (r.recipe, r.seed) in done)
    write_summary(out / "summary.md", data, results, cfg, wall)
    plot(out / "ap.png", data, results)
    print((out / "summary.md").read_text())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
