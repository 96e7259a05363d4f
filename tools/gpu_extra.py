"""GPU-only checks of lossmix_ext that the test suite cannot make on a CPU machine; run by
``tools/gpu_check.py``, one check per process (a device-side assert ends a process's CUDA
context, so one failing check must not take the others down)::

    python tools/gpu_extra.py CHECK [--device cuda|cpu] [--small]

Prints one line per (check, backend): ``RESULT <check> <backend> PASS|FAIL|SKIP <detail>``.
Every comparison is against the ``torch`` backend (the readable PyTorch kernels) or the
formulas, never against the code under test. ``--device cpu --small`` runs the same logic on
tiny CPU inputs (the dry run of the device check).
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import lossmix_ext as L  # noqa: E402

ARGS = argparse.Namespace(device="cuda", small=False)


def report(check: str, backend: str, status: str, detail: str = "") -> None:
    print(f"RESULT {check} {backend} {status} {detail}".rstrip(), flush=True)


def dev() -> torch.device:
    return torch.device(ARGS.device)


def backends(op: str):
    return [b for b in L.available_backends(dev(), op=op) if b != "torch"] or ["torch"]


def sync() -> None:
    if dev().type == "cuda":
        torch.cuda.synchronize()


def loss_and_grad(x, y, counts, backend, **kw):
    """Loss (per row with reduction="none") and the gradient of its sum."""
    x = x.detach().clone().requires_grad_(True)
    loss = L.seesaw_loss(x, y, counts, backend=backend, **kw)
    loss.sum().backward()
    sync()
    return loss.detach(), x.grad


def close(a, b, rtol, atol) -> str:
    try:
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True)
        return ""
    except AssertionError as exc:
        return str(exc).splitlines()[0][:200]


def tolerances(dtype):
    return {torch.float32: (1e-5, 1e-6), torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 8e-3)}[dtype]


# ------------------------------------------------------------------ checks
def c_big_seesaw():
    """N·C > 2^31 logits (64-bit offsets), fp16, one row checked against the torch backend."""
    c = 8192
    n = 64 if ARGS.small else (2**31 // c) + 64
    g = torch.Generator(device=dev()).manual_seed(0)
    x = torch.randn(n, c, generator=g, device=dev(), dtype=torch.float16)
    y = torch.randint(0, c, (n,), generator=g, device=dev())
    counts = torch.rand(c, generator=g, device=dev()) * 100
    for be in backends("seesaw_fwd"):
        try:
            loss, grad = loss_and_grad(x, y, counts, be, reduction="none")
            tail = slice(n - 3, n)  # the rows past 2^31 elements
            want_l, want_g = loss_and_grad(x[tail].float(), y[tail], counts, "torch", reduction="none")
            err = close(loss[tail].float(), want_l, 1e-3, 1e-3) or close(grad[tail].float(), want_g, 1e-3, 1e-3)
            loss = loss.sum()
            ok = torch.isfinite(loss).item() and not err
            report("big_seesaw", be, "PASS" if ok else "FAIL", f"N={n} C={c} {err}")
        except Exception as exc:
            report("big_seesaw", be, "FAIL", f"{type(exc).__name__}: {str(exc)[:200]}")
        torch.cuda.empty_cache() if dev().type == "cuda" else None


def c_big_mix():
    """An image batch of more than 2^31 elements (uint8 → float16), a few samples checked."""
    b, h, w = (4, 8, 8) if ARGS.small else (48, 3072, 4800)
    x = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, device=dev())
    lam, idx = torch.rand(b, device=dev()), torch.roll(torch.arange(b, device=dev()), 1)
    for be in backends("mix_images"):
        try:
            out = L.mix_images(x, lam, idx, out_dtype=torch.float16 if dev().type == "cuda" else torch.float32,
                               backend=be)
            sync()
            errs = []
            for s in (0, b - 1):
                want = (lam[s] * x[s].float() + (1 - lam[s]) * x[idx[s]].float()) / 255
                errs.append(close(out[s].float(), want, 2e-3, 2e-3))
            err = "; ".join(e for e in errs if e)
            report("big_mix", be, "PASS" if not err else "FAIL", f"{b}x3x{h}x{w} {err}")
            del out
        except Exception as exc:
            report("big_mix", be, "FAIL", f"{type(exc).__name__}: {str(exc)[:200]}")


def c_wide_sample():
    """Samples of more than 2^31 elements each (the mix kernels' 64-bit index path), with CutMix
    boxes and per-channel mean / std, uint8 → float16; the last rows of every channel (the
    elements past 2^31) checked against the reference on those rows."""
    b, h, w = (2, 6, 5) if ARGS.small else (2, 26755, 26755)  # 3·h·w > 2^31 on the GPU
    g = torch.Generator(device=dev()).manual_seed(0)
    x = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, device=dev(), generator=g)
    lam, idx = torch.tensor([0.25, 0.75], device=dev()), torch.tensor([1, 0], device=dev())
    boxes = torch.tensor([[h - 4, 1, h, w // 2], [0, 0, h - 2, w]], device=dev())  # (y0, x0, y1, x1)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    r0 = h - 5
    from lossmix_ext import _reference as R
    tail = x[:, :, r0:].float().cpu()
    shifted = (boxes.cpu() - torch.tensor([r0, 0, r0, 0])).clamp(min=0)
    want = R.mix_images(tail, lam.cpu(), idx.cpu(), shifted, torch.tensor(mean), torch.tensor(std), 1 / 255)
    for be in backends("mix_images"):
        try:
            out = L.mix_images(x, lam, idx, boxes=boxes, mean=mean, std=std,
                               out_dtype=torch.float16 if dev().type == "cuda" else torch.float32, backend=be)
            sync()
            err = close(out[:, :, r0:].float().cpu(), want, 2e-3, 4e-3)
            report("wide_sample", be, "PASS" if not err else "FAIL", f"{b}x3x{h}x{w} {err}")
            del out
        except Exception as exc:
            report("wide_sample", be, "FAIL", f"{type(exc).__name__}: {str(exc)[:200]}")
        torch.cuda.empty_cache() if dev().type == "cuda" else None


def view_loss_and_grad(base, view, y, counts, backend, **kw):
    """Loss and gradient for the strided / offset ``view(base)`` itself (no copy: the kernel reads
    the misaligned memory), the gradient read back through the leaf ``base``."""
    base = base.detach().clone().requires_grad_(True)
    x = view(base)
    loss = L.seesaw_loss(x, y, counts, backend=backend, **kw)
    loss.sum().backward()
    sync()
    return loss.detach(), view(base.grad)


def c_misaligned():
    """Logits at odd element offsets with odd row strides (no 16-byte alignment: the views are
    passed to the kernels as they are), every dtype, vs the torch backend on an aligned copy;
    likewise an image batch starting one element into its storage."""
    dtypes = [torch.float32] + ([torch.float16, torch.bfloat16] if dev().type == "cuda" else [])
    for be in backends("seesaw_fwd"):
        errs = []
        for dtype in dtypes:
            for c in (3, 81, 1203, 4099):
                base = torch.randn(37, c + 5, device=dev(), dtype=dtype)
                view = lambda t: t[:, 1:c + 1]  # noqa: E731  offset 1 element, row stride c + 5
                assert view(base).data_ptr() % 16 != 0 and not view(base).is_contiguous()
                y = torch.randint(0, c, (37,), device=dev())
                counts = torch.rand(c, device=dev()) * 50
                got = view_loss_and_grad(base, view, y, counts, be)
                want = loss_and_grad(view(base).float(), y, counts, "torch")
                rtol, atol = tolerances(dtype)
                e = close(got[0].float(), want[0], rtol, atol) or close(got[1].float(), want[1], rtol, atol)
                if e:
                    errs.append(f"{dtype} C={c}: {e}")
        report("misaligned", be, "PASS" if not errs else "FAIL", "; ".join(errs)[:300])
    from lossmix_ext import _reference as R
    for be in backends("mix_images"):
        errs = []
        for dtype in dtypes:
            storage = torch.randn(6 * 3 * 9 * 11 + 1, device=dev(), dtype=dtype)
            x = storage[1:].view(6, 3, 9, 11)  # contiguous, one element past an aligned start
            assert x.data_ptr() % 16 != 0
            lam, idx = torch.rand(6, device=dev()), torch.tensor([5, 0, 0, 3, 1, 2], device=dev())
            out = L.mix_images(x, lam, idx, backend=be)
            want = R.mix_images(x.double().cpu(), lam.double().cpu(), idx.cpu())
            rtol, atol = tolerances(dtype)
            e = close(out.double().cpu(), want, rtol, atol)
            if e:
                errs.append(f"mix {dtype}: {e}")
        report("misaligned", f"{be}/mix", "PASS" if not errs else "FAIL", "; ".join(errs)[:300])


def c_determinism():
    """The same call twice gives bitwise the same loss, gradient and mixed images."""
    for be in backends("seesaw_fwd"):
        x = torch.randn(512, 1203, device=dev())
        y = torch.randint(0, 1203, (512,), device=dev())
        counts = torch.rand(1203, device=dev()) * 50
        a, b = loss_and_grad(x, y, counts, be), loss_and_grad(x, y, counts, be)
        ok = torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        img = torch.randn(8, 3, 32, 32, device=dev(), requires_grad=True)
        lam, idx = torch.rand(8, device=dev()), torch.tensor([1, 1, 0, 3, 3, 3, 7, 6], device=dev())
        grads = []
        for _ in range(2):
            img.grad = None
            L.mix_images(img, lam, idx, backend=be if be in L.available_backends(dev(), op="mix_images") else None
                         ).pow(2).sum().backward()
            grads.append(img.grad.clone())
        ok = ok and torch.equal(grads[0], grads[1])
        report("determinism", be, "PASS" if ok else "FAIL")


def c_graphs():
    """A whole loss step (count update, SeesawLoss with LossMix, backward) captured in a CUDA
    graph and replayed on new data equals eager calls."""
    if dev().type != "cuda":
        report("graphs", "-", "SKIP", "needs CUDA")
        return
    for be in backends("seesaw_fwd"):
        try:
            c, n = 80, 256
            x = torch.randn(n, c + 2, device=dev(), requires_grad=True)
            y = torch.randint(0, c + 1, (n,), device=dev())
            lam = torch.rand(n, device=dev())
            m, ref = L.SeesawLoss(num_classes=c, backend=be).cuda(), L.SeesawLoss(num_classes=c, backend=be).cuda()

            def step(mod, xx):
                d = mod(xx, y, labels_b=y.flip(0), lam=lam)
                (d["loss_cls_objectness"] + d["loss_cls_classes"]).backward()

            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                step(m, x)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            x.grad = None
            m.cum_samples.zero_()
            with torch.cuda.graph(graph):
                step(m, x)
            m.cum_samples.zero_()
            new = torch.randn(n, c + 2, device=dev())
            with torch.no_grad():
                x.copy_(new)
                x.grad.zero_()
            graph.replay()
            xe = new.clone().requires_grad_(True)
            step(ref, xe)
            torch.cuda.synchronize()
            err = close(x.grad, xe.grad, 1e-4, 1e-6) or close(m.cum_samples, ref.cum_samples, 0, 0)
            report("graphs", be, "PASS" if not err else "FAIL", err)
        except Exception as exc:
            report("graphs", be, "FAIL", f"{type(exc).__name__}: {str(exc)[:200]}")


def c_validation_modes():
    """The three value-check modes on the device: "sync" raises ValueError and leaves the context
    usable; "off" checks nothing, and an out-of-range label is skipped, not read or written out
    of bounds: the count update ignores it, its row has no class loss and a zero class gradient,
    and the context stays usable."""
    for be in backends("seesaw_fwd"):
        x = torch.randn(4, 5, device=dev())
        with L.validation("sync"):
            try:
                L.seesaw_loss(x, torch.tensor([0, 1, 9, 2], device=dev()), torch.ones(5, device=dev()), backend=be)
                report("validation_modes", be, "FAIL", "sync: no error for a label out of range")
                continue
            except ValueError:
                pass
        try:
            loss_and_grad(x, torch.tensor([0, 1, 2, 3], device=dev()), torch.ones(5, device=dev()), be)
        except Exception as exc:
            report("validation_modes", be, "FAIL", f"sync: context broken: {exc}"[:200])
            continue
        errs = []
        with L.validation("off"):
            try:
                bad = torch.tensor([0, 7, -3, 2, 3, 99], device=dev())
                m = L.SeesawLoss(num_classes=3, backend=be).to(dev())
                xs = torch.randn(6, 5, device=dev(), requires_grad=True)
                d = m(xs, bad)
                (d["loss_cls_objectness"] + d["loss_cls_classes"]).backward()
                counts = L.count_labels(torch.zeros(4, device=dev()), bad)
                sync()
                if m.cum_samples.tolist() != [1.0, 0.0, 1.0, 1.0]:  # labels 0, 2 and 3 (background) counted
                    errs.append(f"module counts {m.cum_samples.tolist()}")
                if counts.tolist() != [1.0, 0.0, 1.0, 1.0]:
                    errs.append(f"count_labels {counts.tolist()}")
                if not all(torch.isfinite(v).all() for v in d.values()) or not torch.isfinite(xs.grad).all():
                    errs.append("non-finite loss or gradient")
                x6 = torch.randn(6, 5, device=dev(), requires_grad=True)
                rows = L.seesaw_loss(x6, bad, torch.ones(5, device=dev()), backend=be, reduction="none")
                rows.sum().backward()
                sync()
                skipped = (bad < 0) | (bad >= 5)
                if rows[skipped].abs().sum() != 0 or x6.grad[skipped].abs().sum() != 0:
                    errs.append("a row with an out-of-range label has a loss or a gradient")
                if not torch.isfinite(rows).all() or not torch.isfinite(x6.grad).all():
                    errs.append("non-finite rows")
            except Exception as exc:
                errs.append(f"{type(exc).__name__}: {exc}"[:200])
        try:
            loss_and_grad(x, torch.tensor([0, 1, 2, 3], device=dev()), torch.ones(5, device=dev()), be)
        except Exception as exc:
            errs.append(f"off: context broken: {exc}"[:200])
        report("validation_modes", be, "PASS" if not errs else "FAIL", "; ".join(errs)[:300])


ASSERT_CHILD = r"""
import sys, torch, lossmix_ext as L
dev, be = sys.argv[1], sys.argv[2]
try:
    L.seesaw_loss(torch.randn(4, 5, device=dev), torch.tensor([0, 1, 9, 2], device=dev), torch.ones(5, device=dev),
                  backend=be)
    if dev == "cuda":
        torch.cuda.synchronize()
except Exception as exc:
    print("RAISED", type(exc).__name__, exc)
"""


def c_assert_message():
    """A bad label on the device in the default ("auto") mode: the device-side assert (which ends
    the process's CUDA context, hence a child process) prints the check's own message, naming
    the argument and its range, not only "device-side assert triggered"."""
    import subprocess
    want = "labels must lie in [0, 4]"
    for be in backends("seesaw_fwd"):
        p = subprocess.run([sys.executable, "-c", ASSERT_CHILD, ARGS.device, be], capture_output=True, text=True,
                           timeout=120, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
        text = p.stdout + p.stderr
        if dev().type != "cuda":  # CPU tensors: a synchronous ValueError with the message
            ok = "RAISED ValueError" in text and want in text
        else:
            ok = want in text and ("device-side assert" in text or "RAISED" in text)
        report("assert_message", be, "PASS" if ok else "FAIL", "" if ok else text.strip()[-300:])


def c_sanitize_small():
    """Tiny calls of every kernel family, for compute-sanitizer to watch (memcheck / racecheck)."""
    for be in backends("seesaw_fwd"):
        for c in (3, 81, 2100):
            x = torch.randn(5, c + 2, device=dev())
            y = torch.randint(0, c + 1, (5,), device=dev())
            m = L.SeesawLoss(num_classes=c, backend=be).to(dev())
            xx = x.clone().requires_grad_(True)
            d = m(xx, y, labels_b=y.flip(0), lam=torch.rand(5, device=dev()))
            (d["loss_cls_objectness"] + d["loss_cls_classes"]).backward()
    for be in backends("mix_images"):
        img = torch.randn(3, 3, 5, 7, device=dev(), requires_grad=True)
        L.mix_images(img, torch.rand(3, device=dev()), torch.tensor([2, 0, 0], device=dev()),
                     boxes=torch.tensor([[0, 0, 2, 3], [1, 1, 5, 7], [0, 0, 0, 0]], device=dev()),
                     backend=be).sum().backward()
        y = torch.randn(4, 3, 5, 7, device=dev())
        L.mix_images_(y, torch.rand(4, device=dev()), torch.tensor([1, 0, 3, 2], device=dev()), backend=be)
    sync()
    report("sanitize_small", "all", "PASS", "ran (see the sanitizer's own report)")


CHECKS = {name[2:]: fn for name, fn in dict(globals()).items() if name.startswith("c_")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("checks", nargs="*", help=f"default all: {' '.join(CHECKS)}")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args(argv)
    ARGS.device, ARGS.small = args.device, args.small
    failed = False
    for name in args.checks or list(CHECKS):
        if name not in CHECKS:
            report(name, "-", "FAIL", f"unknown check; known: {' '.join(CHECKS)}")
            failed = True
            continue
        try:
            CHECKS[name]()
        except Exception as exc:
            traceback.print_exc()
            report(name, "-", "FAIL", f"{type(exc).__name__}: {str(exc)[:200]}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
