"""Every Python code block of README.md runs, on the CPU, with tiny stand-ins for what a block
takes from the user's program (a model, a data loader, a detector head): the README cannot
drift from the API. A block that uses a name not defined here or by an earlier statement of the
same block fails with NameError (add the stand-in). A block that imports the torchvision plug-in
(``lossmix_ext.integrations.torchvision``) runs with a tiny torchvision detector where
torchvision's detection ops run next to the installed torch, and is skipped with the reason
elsewhere."""
import os
import re
import textwrap

import pytest
import torch
import torch.nn as nn

import lossmix_ext as L

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as _f:
    README = _f.read()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)

N, C, H, W = 8, 1203, 8, 8
B = N  # one batch size for every block


def _standins():
    """Names the README's blocks take from the user's program, consistent in shape."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, C, (N,), generator=g)
    images = torch.rand(B, 3, H, W, generator=g)
    loader = [(torch.randint(0, 256, (B, 3, H, W), dtype=torch.uint8, generator=g),
               torch.randint(0, C, (B,), generator=g)) for _ in range(2)]
    return {
        "torch": torch, "nn": nn, "L": L,
        "cls_score": torch.randn(N, C, generator=g, requires_grad=True),
        "labels": labels, "labels_a": labels, "labels_b": torch.randint(0, C, (N,), generator=g),
        "lam": torch.rand(N, generator=g), "cum_samples": torch.rand(C, generator=g) * 100,
        "logits": torch.randn(N, C, generator=g, requires_grad=True),
        "batch_size": B, "images": images,
        "loss_a": torch.rand(B, generator=g), "loss_b": torch.rand(B, generator=g),
        # detector head: 1203 classes + 2 objectness columns
        "head": nn.Linear(16, C + 2), "rois": torch.randn(N, 16, generator=g),
        "label_weights": torch.ones(N), "num_pos": float(N),
        # classifier: images (B, 3, H, W) -> C logits
        "model": nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, C)),
        "loader": loader,
        # timm's train script
        "mixup_args": dict(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=C),
        "input": torch.randn(B, 3, H, W, generator=g), "target": torch.randint(0, C, (B,), generator=g),
        # timm's dataset with the prefetcher: (uint8 CHW view of an HWC array, label) pairs
        "samples": [(torch.randint(0, 256, (H, W, 3), dtype=torch.uint8, generator=g).numpy().transpose(2, 0, 1), k)
                    for k in range(B)],
    }


TORCHVISION_PLUGIN = "lossmix_ext.integrations.torchvision"


def _detection_standins():
    """A tiny torchvision Faster R-CNN (train mode, 21 classes with background) and a loader of
    torchvision batches: lists of (3, H, W) images in [0, 1] of two sizes and target dicts."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
    backbone.out_channels = 16
    detector = FasterRCNN(backbone, None, min_size=64, max_size=64,
                          rpn_anchor_generator=AnchorGenerator(((8, 16, 32),), ((0.5, 1.0, 2.0),)),
                          box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), box_head=TwoMLPHead(16 * 49, 32),
                          box_predictor=FastRCNNPredictor(32, 21)).train()
    g = torch.Generator().manual_seed(0)
    loader = []
    for _ in range(2):
        images = [torch.rand(3, 64, 48 + 16 * (b % 2), generator=g) for b in range(4)]
        targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 44.0, 50.0]]),
                    "labels": torch.randint(1, 21, (2,), generator=g)} for _ in images]
        loader.append((images, targets))
    return {"detector": detector, "det_loader": loader}


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("i", range(len(BLOCKS)), ids=lambda i: f"block{i}")
def test_readme_block_runs(i):
    code = textwrap.dedent(BLOCKS[i])  # a block inside a list item is indented
    ns = _standins()
    if TORCHVISION_PLUGIN in code:
        from benchmarks.frameworks import torchvision_detection_status
        status = torchvision_detection_status()
        if status != "ok":
            pytest.skip(f"this block needs torchvision's detection models, which cannot run here: {status}")
        ns.update(_detection_standins())
    exec(compile(code, f"README.md python block {i}", "exec"), ns)  # noqa: S102
    # a block that computes a loss: it must be a finite scalar that backpropagates
    loss = ns.get("loss")
    if isinstance(loss, torch.Tensor) and loss.requires_grad and loss.dim() == 0:
        assert torch.isfinite(loss)
        loss.backward()
