"""``SeesawLoss(sync_counts=...)`` across processes: 2 CPU ranks, gloo, loopback only.

The workers are this file run as a script (``python test_distributed.py worker ...``), one
subprocess per rank, in a new session so that they can be killed as a group. The parent
writes every input (weights, features, per-rank label batches) to a file, the workers run
all the scenarios once (a module-scoped fixture: starting torch costs seconds per process)
and write what they saw (counts, losses, logits and their gradient, weights) back; the
expectations are computed here, in one process, with the pure-PyTorch reference in float64.

Time bounds: gloo's timeout (init and collectives) is ``PG_TIMEOUT_S``; the parent waits at
most ``DEADLINE_S`` for both workers and kills what is left (also as soon as one worker
fails, so the other cannot sit in a collective).
"""
from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

C = 5  # classes; label C is background
D = 6  # features
WORLD = 2
STEPS = 3
BATCH = (10, 7)  # rows per rank (uneven on purpose)
LR = 0.5
PG_TIMEOUT_S = 30
DEADLINE_S = 120


# --------------------------------------------------------------------------- shared model
class Net(nn.Module):
    """Linear head whose forward returns the Seesaw losses (the loss is a submodule, so its
    ``cum_samples`` is one of DDP's buffers) and the logits (with their gradient retained)."""

    def __init__(self, sync_counts: bool, retain_grad: bool = True):
        super().__init__()
        from lossmix_ext import SeesawLoss

        self.fc = nn.Linear(D, C + 2)
        self.loss = SeesawLoss(num_classes=C, sync_counts=sync_counts)
        self.retain_grad = retain_grad

    def forward(self, x, labels, labels_b=None, lam=None):
        logits = self.fc(x)
        if self.retain_grad and logits.requires_grad:
            logits.retain_grad()
        out = self.loss(logits, labels, labels_b=labels_b, lam=lam)
        return out["loss_cls_objectness"], out["loss_cls_classes"], logits


# --------------------------------------------------------------------------- worker side
def _train(model, opt, inputs, rank, steps):
    """Runs the DDP steps; returns one record per step as seen by this rank."""
    loss_mod = model.module.loss if hasattr(model, "module") else model.loss
    recs = []
    for k in range(steps):
        x, y = inputs["x"][k][rank], inputs["y"][k][rank]
        opt.zero_grad()
        obj, cls, logits = model(x, y)
        (obj + cls).backward()
        opt.step()
        recs.append({
            "counts": loss_mod.cum_samples.detach().clone(),
            "obj": obj.detach().clone(), "cls": cls.detach().clone(),
            "logits": logits.detach().clone(), "grad": logits.grad.detach().clone(),
            "weight": model.module.fc.weight.detach().clone(), "bias": model.module.fc.bias.detach().clone(),
        })
    return recs


def _worker(rank: int, world: int, port: int, inputs_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=PG_TIMEOUT_S))
    try:
        inputs = torch.load(inputs_path)
        results = {}
        for name, sync in (("ddp_sync", True), ("ddp_nosync", False)):
            net = Net(sync_counts=sync)
            net.load_state_dict(inputs["init"])  # same start on both ranks (DDP would broadcast it anyway)
            model = DDP(net)  # default arguments: broadcast_buffers=True
            opt = torch.optim.SGD(model.parameters(), lr=LR)
            results[name] = _train(model, opt, inputs, rank, STEPS)
        # A process group but no DDP: the all-reduce alone; a LossMix step (both label sets are
        # counted) and a step where rank 1 has an empty batch (it must still join the all-reduce).
        net = Net(sync_counts=True)
        net.load_state_dict(inputs["init"])
        recs = []
        for x, y, yb, lam in inputs["plain"][rank]:
            with torch.no_grad():
                obj, cls, logits = net(x, y, labels_b=yb, lam=lam)
            recs.append({"counts": net.loss.cum_samples.clone(), "obj": obj, "cls": cls, "logits": logits})
        results["pg_plain"] = recs
        # torch.compile(fullgraph=True) of a module holding SeesawLoss(sync_counts=True): the
        # all-reduce and the buffer update are captured in one graph. backend="aot_eager" (dynamo +
        # AOTAutograd, ~3 s here; inductor works as well but compiles for 10-25 s on 2 cores).
        try:
            net = Net(sync_counts=True, retain_grad=False)
            net.load_state_dict(inputs["init"])
            compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
            recs = []
            for k in range(2):
                x, y = inputs["x"][k][rank], inputs["y"][k][rank]
                net.zero_grad()
                obj, cls, logits = compiled(x, y)
                (obj + cls).backward()
                recs.append({"counts": net.loss.cum_samples.clone(), "obj": obj.detach(), "cls": cls.detach(),
                             "logits": logits.detach(), "weight_grad": net.fc.weight.grad.clone(),
                             "bias_grad": net.fc.bias.grad.clone()})
            results["compiled"] = recs
        except Exception as e:  # reported by the test (both ranks fail alike; gloo's timeout bounds the rest)
            results["compiled"] = f"{type(e).__name__}: {e}"[:4000]
        torch.save(results, out_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- parent side
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill(procs):
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                p.kill()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _launch(tmp: Path, inputs_path: Path):
    """Starts the 2 workers and waits (bounded); returns (ok, message, out paths)."""
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    procs, logs, outs = [], [], []
    try:
        for rank in range(WORLD):
            out = tmp / f"out{rank}.pt"
            log = open(tmp / f"log{rank}.txt", "w+")
            logs.append(log)
            outs.append(out)
            procs.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "worker", str(rank), str(WORLD), str(port),
                 str(inputs_path), str(out)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        deadline = time.monotonic() + DEADLINE_S
        failed = None
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            bad = [r for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                failed = f"worker {bad[0]} exited with code {codes[bad[0]]}"
                break
            if all(c == 0 for c in codes):
                break
            time.sleep(0.05)
        else:
            failed = f"workers still running after {DEADLINE_S} s (hang?)"
    finally:
        _kill(procs)
    text = []
    for rank, log in enumerate(logs):
        log.seek(0)
        text.append(f"--- rank {rank} (exit {procs[rank].returncode}) ---\n{log.read()[-4000:]}")
        log.close()
    return failed is None, (failed or "") + "\n" + "\n".join(text), outs


def _make_inputs():
    g = torch.Generator().manual_seed(1234)
    init = Net(sync_counts=False).state_dict()
    init["fc.weight"] = torch.randn(C + 2, D, generator=g) * 0.5
    init["fc.bias"] = torch.randn(C + 2, generator=g) * 0.1
    # rank 0 sees mostly the low classes, rank 1 mostly the high ones; both see background
    pools = ([0, 0, 0, 1, 1, 2, C, C], [2, 3, 3, 4, 4, 4, C])
    xs, ys = [], []
    for _ in range(STEPS):
        xs.append([torch.randn(BATCH[r], D, generator=g) for r in range(WORLD)])
        ys.append([torch.tensor(pools[r])[torch.randint(len(pools[r]), (BATCH[r],), generator=g)]
                   for r in range(WORLD)])
    for r in range(WORLD):  # every rank has background and a foreground label in each step
        for k in range(STEPS):
            ys[k][r][0], ys[k][r][1] = C, pools[r][k % 2]
    plain = []
    for r in range(WORLD):
        n = BATCH[r]
        steps = [
            (torch.randn(n, D, generator=g), ys[0][r], None, None),
            (torch.randn(n, D, generator=g), ys[1][r], ys[2][r][:n], torch.rand(n, generator=g)),
            # rank 1: an empty batch
            (torch.randn(n if r == 0 else 0, D, generator=g), ys[2][r][:n if r == 0 else 0], None, None),
        ]
        plain.append(steps)
    return {"init": init, "x": xs, "y": ys, "plain": plain}


@pytest.fixture(scope="module")
def dist_run(tmp_path_factory):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    tmp = tmp_path_factory.mktemp("dist")
    inputs = _make_inputs()
    inputs_path = tmp / "inputs.pt"
    torch.save(inputs, inputs_path)
    for attempt in range(2):  # the port picked can be taken by someone else before the workers bind it
        ok, msg, outs = _launch(tmp, inputs_path)
        if ok or "address already in use" not in msg.lower():
            break
    assert ok, msg
    results = [torch.load(o) for o in outs]
    return inputs, results


def _hist(labels) -> torch.Tensor:
    return torch.bincount(labels.reshape(-1).long(), minlength=C + 1).to(torch.float64)


def _ref_loss(logits, labels, counts, labels_b=None, lam=None):
    """float64 reference (objectness, classes, d(obj+cls)/dlogits); counts include the batch."""
    from lossmix_ext import _reference as R

    z = logits.detach().double().requires_grad_(True)
    if labels_b is None:
        obj, cls = R.seesaw_module_loss(z, labels, counts.double(), C)
    else:
        obj, cls = R.seesaw_module_loss_mixed(z, labels, labels_b, lam, counts.double(), C)
    if z.shape[0]:
        (obj + cls).backward()
        grad = z.grad
    else:
        grad = torch.zeros_like(z)
    return obj.detach(), cls.detach(), grad


def _close(actual, expected, what, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _simulate(inputs, counts_of):
    """The DDP training in one float64 process: every rank's logits, the reference loss with
    ``counts_of(rank, step)``, the gradient averaged over the ranks, SGD. Returns the weights
    after each step."""
    W = inputs["init"]["fc.weight"].double().clone()
    b = inputs["init"]["fc.bias"].double().clone()
    out = []
    for k in range(STEPS):
        gW, gb = torch.zeros_like(W), torch.zeros_like(b)
        for r in range(WORLD):
            Wr, br = W.clone().requires_grad_(True), b.clone().requires_grad_(True)
            logits = inputs["x"][k][r].double() @ Wr.T + br
            _, _, glog = _ref_loss(logits, inputs["y"][k][r], counts_of(r, k))
            logits.backward(glog)
            gW += Wr.grad / WORLD
            gb += br.grad / WORLD
        W, b = W - LR * gW, b - LR * gb
        out.append((W.clone(), b.clone()))
    return out


def _check_steps(inputs, results, scenario, counts_of):
    sim = _simulate(inputs, counts_of)
    for r in range(WORLD):
        for k, rec in enumerate(results[r][scenario]):
            where = f"{scenario} rank {r} step {k}"
            exp_counts = counts_of(r, k)
            assert rec["counts"].dtype == torch.float32
            assert torch.equal(rec["counts"].double(), exp_counts), \
                f"{where}: cum_samples {rec['counts'].tolist()} != expected {exp_counts.tolist()}"
            obj, cls, grad = _ref_loss(rec["logits"], inputs["y"][k][r], exp_counts)
            _close(rec["obj"], obj, f"{where}: loss_cls_objectness")
            _close(rec["cls"], cls, f"{where}: loss_cls_classes")
            _close(rec["grad"], grad, f"{where}: d loss / d logits")
            _close(rec["weight"], sim[k][0], f"{where}: fc.weight after the SGD step", rtol=1e-4, atol=1e-5)
            _close(rec["bias"], sim[k][1], f"{where}: fc.bias after the SGD step", rtol=1e-4, atol=1e-5)
    assert len(results[0][scenario]) == len(results[1][scenario]) == STEPS


# --------------------------------------------------------------------------- tests
def test_ddp_sync_counts_global(dist_run):
    """DDP (default arguments) + sync_counts=True: after every step both ranks hold the
    histogram of all ranks' labels so far, and their losses / gradients use it."""
    inputs, results = dist_run
    y = inputs["y"]

    def global_counts(rank, step):
        return sum(_hist(y[k][r]) for k in range(step + 1) for r in range(WORLD))

    for k in range(STEPS):
        assert torch.equal(results[0]["ddp_sync"][k]["counts"], results[1]["ddp_sync"][k]["counts"])
        # the test's inputs make the global counts differ from each rank's own
        own = [sum(_hist(y[j][r]) for j in range(k + 1)) for r in range(WORLD)]
        assert not torch.equal(own[0], global_counts(0, k)) and not torch.equal(own[1], global_counts(1, k))
    _check_steps(inputs, results, "ddp_sync", global_counts)


def test_ddp_no_sync_counts_broadcast_buffers(dist_run):
    """DDP (broadcast_buffers=True) + sync_counts=False, as with mmdetection's SeesawLoss: each
    forward first overwrites the buffers with rank 0's, then counts the local batch. Rank 0
    keeps its own history; rank 1 holds rank 0's counts after step k-1 plus its own batch k
    (neither its own history nor the global one) and computes its loss with those."""
    inputs, results = dist_run
    y = inputs["y"]

    def rank0_own(step):
        return sum((_hist(y[k][0]) for k in range(step + 1)), torch.zeros(C + 1, dtype=torch.float64))

    def counts_of(rank, step):
        if rank == 0:
            return rank0_own(step)
        return rank0_own(step - 1) + _hist(y[step][1])

    _check_steps(inputs, results, "ddp_nosync", counts_of)
    last = results[1]["ddp_nosync"][-1]["counts"].double()
    assert not torch.equal(last, sum(_hist(y[k][1]) for k in range(STEPS)))  # not per-rank
    assert not torch.equal(last, sum(_hist(y[k][r]) for k in range(STEPS) for r in range(WORLD)))  # not global


def test_process_group_without_ddp(dist_run):
    """sync_counts=True with a process group but no DDP (no buffer broadcast): the all-reduce
    alone gives global counts; a LossMix step counts both label sets of every rank; a rank with
    an empty batch still takes part (and gets the others' counts)."""
    inputs, results = dist_run
    total = torch.zeros(C + 1, dtype=torch.float64)
    for k in range(3):
        for r in range(WORLD):
            _, y, yb, _ = inputs["plain"][r][k]
            total += _hist(y) + (0 if yb is None else _hist(yb))
        for r in range(WORLD):
            rec = results[r]["pg_plain"][k]
            where = f"pg_plain rank {r} step {k}"
            assert torch.equal(rec["counts"].double(), total), \
                f"{where}: cum_samples {rec['counts'].tolist()} != {total.tolist()}"
            _, y, yb, lam = inputs["plain"][r][k]
            if y.numel() == 0:
                # No rows: the library returns 0 for both parts, where the reference (and
                # mmdetection's mean over no rows) gives a NaN objectness; only counts matter here.
                continue
            obj, cls, _ = _ref_loss(rec["logits"], y, total, yb, lam)
            _close(rec["obj"], obj, f"{where}: loss_cls_objectness")
            _close(rec["cls"], cls, f"{where}: loss_cls_classes")


def test_sync_counts_without_process_group():
    """No process group: sync_counts=True counts per process, exactly as sync_counts=False."""
    from lossmix_ext import SeesawLoss

    assert not torch.distributed.is_initialized()
    a = SeesawLoss(num_classes=C, sync_counts=True)
    b = SeesawLoss(num_classes=C, sync_counts=False)
    g = torch.Generator().manual_seed(7)
    hist = torch.zeros(C + 1, dtype=torch.float64)
    for k in range(3):
        logits = torch.randn(9, C + 2, generator=g)
        labels = torch.randint(C + 1, (9,), generator=g)
        labels[0] = C
        kw = {}
        if k == 2:
            kw = {"labels_b": torch.randint(C + 1, (9,), generator=g), "lam": torch.rand(9, generator=g)}
            hist += _hist(kw["labels_b"])
        hist += _hist(labels)
        za, zb = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
        oa, ob = a(za, labels, **kw), b(zb, labels, **kw)
        (oa["loss_cls_objectness"] + oa["loss_cls_classes"]).backward()
        (ob["loss_cls_objectness"] + ob["loss_cls_classes"]).backward()
        assert torch.equal(a.cum_samples, b.cum_samples)
        assert torch.equal(a.cum_samples.double(), hist)
        for key in oa:
            assert torch.equal(oa[key], ob[key]), key
        assert torch.equal(za.grad, zb.grad)


def test_compiled_fullgraph_sync_counts(dist_run):
    """torch.compile(fullgraph=True, backend="aot_eager") of a module holding
    SeesawLoss(sync_counts=True), process group, no DDP: no graph break, global counts, losses
    and parameter gradients as in eager. (DDP itself is not fullgraph-compilable: its
    pre-forward logger breaks the graph; the wrapped module still compiles to one graph.)"""
    inputs, results = dist_run
    y = inputs["y"]
    for r in range(WORLD):
        recs = results[r]["compiled"]
        assert not isinstance(recs, str), f"rank {r}: torch.compile failed: {recs}"
        for k, rec in enumerate(recs):
            where = f"compiled rank {r} step {k}"
            counts = sum(_hist(y[j][q]) for j in range(k + 1) for q in range(WORLD))
            assert torch.equal(rec["counts"].double(), counts), f"{where}: {rec['counts'].tolist()}"
            obj, cls, glog = _ref_loss(rec["logits"], y[k][r], counts)
            _close(rec["obj"], obj, f"{where}: loss_cls_objectness")
            _close(rec["cls"], cls, f"{where}: loss_cls_classes")
            x = inputs["x"][k][r].double()
            _close(rec["weight_grad"], glog.T @ x, f"{where}: fc.weight.grad")
            _close(rec["bias_grad"], glog.sum(0), f"{where}: fc.bias.grad")



if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "worker":
    _worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6])
