"""Triton image-mixing kernels (``mix_images``, ``mix_images_backward``, ``mix_images_``).

Without a GPU they run under the Triton interpreter (set by conftest), on small shapes.
Golden values come from ``lossmix_ext._reference`` (plain PyTorch, differentiated by
autograd) or from formulas written out in the tests.

Tolerances: float32 outputs rtol 1e-5 (atol 1e-5 where normalisation by std < 1 scales
values up); float16 outputs 1e-3 (one float16 ulp: the kernel mixes then normalises in
float32, the reference normalises then mixes, so the float32 values differ in the last bits
and can round to neighbouring float16 values).
"""
import os

import pytest
import torch

import lossmix_ext as L
from lossmix_ext import _ops, _reference as R
from triton_aot import compile_module_configs

HAS_CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(L._backend.unavailable_reason("triton", "cuda" if HAS_CUDA else "cpu") is not None,
                                reason="the triton backend is not usable here")

DEV = "cuda" if HAS_CUDA else "cpu"
try:  # module-level, so that a test kernel can call it
    from lossmix_ext.backends.triton.mix import _udiv as _mix_udiv
except Exception:  # pragma: no cover - triton missing: the module is skipped
    _mix_udiv = None
B, C, H, W = 5, 3, 7, 9
# Repeats (1 is everyone's partner but 2's), samples nobody picks (2, 3), a fixed point (1 -> 1).
REPEAT_INDEX = [1, 1, 4, 0, 1]
# Full box, box at the bottom-right border, empty box, one-pixel box at the corner, empty (y0 == y1) box.
EDGE_BOXES = [[0, 0, H, W], [3, 4, H, W], [0, 0, 0, 0], [H - 1, W - 1, H, W], [3, 3, 3, 5]]
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.5]


def _mix_module():
    from lossmix_ext.backends.triton import mix
    return mix


def _images(dtype, shape=(B, C, H, W), channels_last=False, device=DEV):
    if dtype == torch.uint8:
        x = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    else:
        x = torch.randn(shape, device=device).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _lam(n, device=DEV):
    lam = torch.rand(n, device=device)
    lam[0] = 1.0  # unmixed sample: partner not read
    if n > 1:
        lam[1] = 0.0  # own pixels not read
    return lam


def _tol(out_dtype, normalised):
    if out_dtype == torch.float16:
        return dict(rtol=1e-3, atol=1e-3)
    if out_dtype == torch.bfloat16:
        return dict(rtol=8e-3, atol=8e-3)
    return dict(rtol=1e-5, atol=1e-5 if normalised else 1e-6)


# --------------------------------------------------------------------------- magic division
def _udiv_kernel():
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["magic", "shift"])
    def kern(x_ptr, y_ptr, n, magic, shift, BLOCK: tl.constexpr):
        o = tl.arange(0, BLOCK)
        m = o < n
        v = tl.load(x_ptr + o, mask=m, other=0)
        tl.store(y_ptr + o, _mix_udiv(v, magic, shift), mask=m)
    return kern


def test_magic_divider_formula():
    np = pytest.importorskip("numpy")
    mix = _mix_module()
    rng = np.random.default_rng(0)
    for d in [1, 2, 3, 5, 7, 9, 63, 224, 224 * 3, 50176, 150528, 2 ** 20 + 7, 2 ** 30, 2 ** 31 - 1]:
        m, s = mix.magic_divider(d)
        mu = np.uint64(m % 2 ** 32)
        n = np.concatenate([rng.integers(0, 2 ** 31, 20000), [0, 1, d - 1, d, d + 1, 2 * d - 1, 2 ** 31 - 1]])
        n = n[(n >= 0) & (n < 2 ** 31)].astype(np.uint64)
        q = (((n * mu) >> np.uint64(32)) + n) >> np.uint64(s)
        np.testing.assert_array_equal(q, n // np.uint64(d), err_msg=f"d={d}")
    with pytest.raises(ValueError, match="divisor"):
        mix.magic_divider(0)


def test_udiv_in_kernel():
    mix = _mix_module()
    kern = _udiv_kernel()
    for d in [1, 3, 7, 224, 3 * 224 * 224, 2 ** 31 - 1]:
        x = torch.cat([torch.randint(0, 2 ** 31 - 1, (200,), dtype=torch.int32),
                       torch.tensor([0, 2 ** 31 - 1, min(d, 2 ** 31 - 1), d - 1], dtype=torch.int32)]).to(DEV)
        y = torch.empty_like(x)
        m, s = mix.magic_divider(d)
        kern[(1,)](x, y, x.numel(), m, s, BLOCK=256)
        torch.testing.assert_close(y, torch.div(x, d, rounding_mode="floor"), rtol=0, atol=0)


# --------------------------------------------------------------------------- forward
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.uint8, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_boxes", [False, True])
@pytest.mark.parametrize("norm", [None, "mean_std", "std"])
def test_forward_matches_reference(in_dtype, channels_last, with_boxes, norm):
    x = _images(in_dtype, channels_last=channels_last)
    lam = _lam(B)
    index = torch.tensor(REPEAT_INDEX, device=DEV)
    boxes = torch.tensor(EDGE_BOXES, device=DEV) if with_boxes else None
    mean = torch.tensor(MEAN, device=DEV) if norm == "mean_std" else None
    std = torch.tensor(STD, device=DEV) if norm is not None else None
    scale = 1 / 255 if in_dtype == torch.uint8 else 1.0
    for out_dtype in (None, torch.float16):
        got = L.mix_images(x, lam, index, boxes=boxes, mean=mean, std=std, out_dtype=out_dtype, backend="triton")
        want = R.mix_images(x, lam, index, boxes, mean, std, scale, out_dtype)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert got.is_contiguous(memory_format=fmt)
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, **_tol(want.dtype, norm is not None))


@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_several_chunks_per_sample(channels_last):
    # 3·20·24 = 1440 elements per sample: two programs per sample, boxes across the split.
    shape = (3, 3, 20, 24)
    x = _images(torch.uint8, shape, channels_last)
    lam = torch.tensor([0.3, 1.0, 0.75], device=DEV)
    index = torch.tensor([2, 0, 0], device=DEV)
    boxes = torch.tensor([[5, 2, 19, 23], [0, 0, 0, 0], [0, 10, 20, 24]], device=DEV)
    mean, std = torch.tensor(MEAN, device=DEV), torch.tensor(STD, device=DEV)
    got = L.mix_images(x, lam, index, boxes=boxes, mean=mean, std=std, backend="triton")
    want = R.mix_images(x, lam, index, boxes, mean, std, 1 / 255)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_forward_other_shapes_and_strides():
    index = torch.tensor([3, 0, 6, 1, 2, 5, 4], device=DEV)  # odd batch, random permutation
    lam = _lam(7)
    for shape in [(7, 1, 1, 1), (7, 37, 1, 1), (7, 2, 3, 5, 4)]:
        x = torch.randn(shape, device=DEV)
        got = L.mix_images(x, lam, index, backend="triton")
        torch.testing.assert_close(got, R.mix_images(x, lam, index), rtol=1e-5, atol=1e-6)
    # Non-dense input (a slice): computed contiguous, returned in empty_like's layout.
    base = torch.randn(7, 3, 6, 10, device=DEV)
    x = base[:, :, :, ::2]
    boxes = torch.tensor([[1, 1, 4, 3]] * 7, device=DEV)
    got = L.mix_images(x, lam, index, boxes=boxes, std=torch.tensor(STD, device=DEV), backend="triton")
    want = R.mix_images(x, lam, index, boxes, None, torch.tensor(STD, device=DEV), 1.0)
    assert got.stride() == torch.empty_like(x).stride()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_batch_formulas_of_timm_and_torchvision(backend):
    x = torch.randn(6, 3, 4, 5, device=DEV)
    lam = 0.3
    flip = torch.arange(5, -1, -1, device=DEV)
    timm = x * lam + x.flip(0) * (1.0 - lam)  # timm Mixup, mode="batch"
    torch.testing.assert_close(L.mix_images(x, lam, flip, backend=backend), timm, rtol=1e-5, atol=1e-6)
    roll = torch.roll(torch.arange(6, device=DEV), 1)
    tv = x * lam + x.roll(1, 0) * (1.0 - lam)  # torchvision RandomMixUp
    torch.testing.assert_close(L.mix_images(x, lam, roll, backend=backend), tv, rtol=1e-5, atol=1e-6)
    # The pairings produced by sample_mix are the same index vectors.
    _, idx_flip = L.sample_mix(6, pairing="flip", device=DEV)
    _, idx_roll = L.sample_mix(6, pairing="roll", device=DEV)
    assert idx_flip.tolist() == flip.tolist() and idx_roll.tolist() == roll.tolist()


def test_out_of_range_index_is_skipped_without_validation():
    x = torch.randn(3, 2, 3, 4, device=DEV)
    lam = torch.tensor([0.25, 0.5, 1.0], device=DEV)
    index = torch.tensor([1, 3, -1], device=DEV)
    with L.validation("off"):
        got = L.mix_images(x, lam, index, backend="triton")
    torch.testing.assert_close(got[0], 0.25 * x[0] + 0.75 * x[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], 0.5 * x[1], rtol=1e-5, atol=1e-6)  # partner skipped (counts as 0)
    torch.testing.assert_close(got[2], x[2], rtol=0, atol=0)
    # "sync": a ValueError on CUDA too (the default there is a device-side assert, which would
    # not raise here and would leave the CUDA context broken for every later test)
    with L.validation("sync"), pytest.raises(ValueError, match="index"):
        L.mix_images(x, lam, index, backend="triton")


# --------------------------------------------------------------------------- backward
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_boxes", [False, True])
@pytest.mark.parametrize("with_std", [False, True])
def test_backward_matches_torch_kernel_with_repeated_indices(channels_last, with_boxes, with_std):
    g = _images(torch.float32, channels_last=channels_last)
    lam = _lam(B)
    index = torch.tensor(REPEAT_INDEX, device=DEV)
    boxes = torch.tensor(EDGE_BOXES, device=DEV) if with_boxes else None
    std = torch.tensor(STD, device=DEV) if with_std else None
    for grad_dtype, images_dtype in ((torch.float32, torch.float32), (torch.float16, torch.float32),
                                     (torch.float32, torch.float16)):
        gg = g.to(grad_dtype)
        got = _ops.mix_images_backward(gg, lam, index, boxes, std, 0.5, images_dtype, "triton")
        want = _ops.mix_images_backward(gg, lam, index, boxes, std, 0.5, images_dtype, "torch")
        assert got.dtype == images_dtype and got.stride() == want.stride()
        torch.testing.assert_close(got, want, **_tol(images_dtype, with_std))


@pytest.mark.parametrize("with_boxes", [False, True])
def test_gradient_matches_reference_autograd(with_boxes):
    x = torch.randn(B, C, H, W, device=DEV)
    lam = _lam(B)
    index = torch.tensor(REPEAT_INDEX, device=DEV)
    boxes = torch.tensor(EDGE_BOXES, device=DEV) if with_boxes else None
    mean, std = torch.tensor(MEAN, device=DEV), torch.tensor(STD, device=DEV)
    up = torch.randn(B, C, H, W, device=DEV)
    xt = x.clone().requires_grad_()
    (L.mix_images(xt, lam, index, boxes=boxes, mean=mean, std=std, scale=0.5, backend="triton") * up).sum().backward()
    xr = x.clone().requires_grad_()
    (R.mix_images(xr, lam, index, boxes, mean, std, 0.5) * up).sum().backward()
    torch.testing.assert_close(xt.grad, xr.grad, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64():
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64, device=DEV, requires_grad=True)
    lam = torch.tensor([0.3, 0.9, 0.5], dtype=torch.float64, device=DEV)
    index = torch.tensor([2, 2, 0], device=DEV)
    boxes = torch.tensor([[1, 1, 3, 3], [0, 0, 0, 0], [0, 2, 3, 3]], device=DEV)
    std = torch.tensor([0.5, 2.0], dtype=torch.float64, device=DEV)

    def f_torch(t):
        return L.mix_images(t, lam, index, boxes=boxes, std=std, scale=0.7, backend="torch")

    def f_triton(t):  # float64 is routed to the torch kernels
        return L.mix_images(t, lam, index, boxes=boxes, std=std, scale=0.7, backend="triton")

    assert torch.autograd.gradcheck(f_torch, (x,))
    assert torch.autograd.gradcheck(f_triton, (x,), fast_mode=True)


def test_inverse_index():
    mix = _mix_module()
    index = torch.tensor([3, 3, 0, 5, 3, 1], device=DEV)
    order, starts = mix.inverse_index(index)
    for j in range(6):
        got = sorted(order[starts[j]:starts[j + 1]].tolist())
        assert got == [b for b in range(6) if index[b] == j]


# --------------------------------------------------------------------------- in place
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("pairing", ["flip", "pairs"])
def test_inplace_pairs_match_out_of_place(dtype, pairing):
    n = 7  # odd: one fixed point
    lam, index = L.sample_mix(n, 0.7, pairing=pairing, device=DEV)
    lam[2] = 1.0  # one side of a pair left as it is
    x = torch.randn(n, 3, 5, 6, device=DEV).to(dtype)
    want = L.mix_images(x, lam, index, backend="triton")
    ref = R.mix_images(x, lam, index)
    y = x.clone()
    assert L.mix_images_(y, lam, index, backend="triton") is y
    torch.testing.assert_close(y, want, **_tol(dtype, False))
    torch.testing.assert_close(y, ref, **_tol(dtype, False))
    fixed = (index == torch.arange(n, device=DEV)).nonzero().flatten().tolist()
    for b in fixed + [2]:
        assert torch.equal(y[b], x[b])


def test_inplace_layouts():
    lam, index = L.sample_mix(6, pairing="pairs", device=DEV)
    x = torch.randn(6, 3, 4, 5, device=DEV).contiguous(memory_format=torch.channels_last)
    y = x.clone(memory_format=torch.preserve_format)
    L.mix_images_(y, lam, index, backend="triton")
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, R.mix_images(x, lam, index), rtol=1e-5, atol=1e-6)
    base = torch.randn(6, 3, 4, 10, device=DEV)
    view = base[..., ::2]
    expected = R.mix_images(view, lam, index)
    untouched = base[..., 1::2].clone()
    L.mix_images_(view, lam, index, backend="triton")
    torch.testing.assert_close(base[..., ::2], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(base[..., 1::2], untouched)


def test_inplace_rejects_non_pairings():
    x = torch.randn(4, 3, 1, 1, device=DEV)
    with L.validation("sync"), pytest.raises(ValueError, match="index"):  # sync: see above
        L.mix_images_(x, 0.5, torch.tensor([1, 2, 3, 0], device=DEV), backend="triton")


# --------------------------------------------------------------------------- configurations / AOT
class _Recorder:
    def __init__(self, fn, log):
        self.fn, self.log = fn, log

    def __getitem__(self, grid):
        launch = self.fn[grid]

        def run(*args, **kwargs):
            self.log.append((self.fn, args, kwargs))
            return launch(*args, **kwargs)
        return run


def test_dispatch_launches_only_aot_configurations(monkeypatch):
    mix = _mix_module()
    known = [(fn, sig, ce) for _, fn, sig, ce in mix.aot_configs()]
    log = []
    for name in ("_mix_fwd_kernel", "_mix_bwd_kernel", "_mix_pairs_kernel"):
        monkeypatch.setattr(mix, name, _Recorder(getattr(mix, name), log))
    x = _images(torch.uint8)
    lam = _lam(B)
    index = torch.tensor(REPEAT_INDEX, device=DEV)
    L.mix_images(x, lam, index, boxes=torch.tensor(EDGE_BOXES, device=DEV), mean=MEAN, std=STD,
                 out_dtype=torch.float16, backend="triton")
    xf = torch.randn(B, C, H, W, device=DEV, requires_grad=True)
    L.mix_images(xf, lam, index, std=STD, backend="triton").sum().backward()
    lp, ip = L.sample_mix(4, pairing="pairs", device=DEV)
    L.mix_images_(torch.randn(4, 3, 1, 1, device=DEV, dtype=torch.float16), lp, ip, backend="triton")
    assert len(log) == 4
    tl_names = {torch.uint8: "u8", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
    for fn, args, kwargs in log:
        names = fn.arg_names
        ptr_types = {names[i]: "*" + tl_names[a.dtype] for i, a in enumerate(args)
                     if isinstance(a, torch.Tensor) and a.dtype in tl_names}
        consts = {k: v for k, v in kwargs.items() if k.isupper()}
        matches = [sig for f, sig, ce in known if f is fn and ce == consts
                   and all(sig[k] == v for k, v in ptr_types.items())]
        assert len(matches) == 1, (fn.__name__, ptr_types, consts)


def _aot_subset(configs):
    """Every kernel with every flag combination (float32), plus every dtype pair with all flags on."""
    keep = []
    for name, fn, sig, ce in configs:
        flags_all = all(v for k, v in ce.items() if k != "BLOCK")
        if "_fp32_fp32_" in name or name.startswith("mix_pairs") or flags_all:
            keep.append((name, fn, sig, ce))
    return keep


@pytest.mark.parametrize("cc", [80, 90])
def test_aot_compile(cc):
    """Compile the kernels for sm_80 / sm_90 without a GPU."""
    mix = _mix_module()
    configs = mix.aot_configs()
    assert len({name for name, *_ in configs}) == len(configs) == 12 * 4 + 9 * 4 + 3 * 2
    if os.environ.get("LOSSMIX_EXT_AOT_ALL", "0") != "1":  # all 90 take ~1 min per target
        configs = _aot_subset(configs)
    names = [name for name, *_ in configs]
    results = compile_module_configs("lossmix_ext.backends.triton.mix", cc, names)
    assert sorted(r["name"] for r in results) == sorted(names)
    for r in results:
        print(f"sm_{cc} {r}")
        assert r["cubin_bytes"] > 0
        if "registers" in r:
            assert r.get("local_bytes", 0) == 0 and r.get("stack_bytes", 0) == 0, f"{r['name']} spills: {r}"
            # <= 168 registers: at least 3 blocks of 128 threads per SM
            assert r["registers"] <= 168, f"{r['name']} uses {r['registers']} registers"


# --------------------------------------------------------------------------- GPU
gpu = pytest.mark.gpu


@gpu
@pytest.mark.parametrize("in_dtype,out_dtype", [(torch.uint8, torch.bfloat16), (torch.bfloat16, torch.bfloat16),
                                                (torch.float32, torch.float32), (torch.float16, torch.float32)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gpu_forward_backward(in_dtype, out_dtype, channels_last):
    shape = (17, 3, 67, 45)
    x = _images(in_dtype, shape, channels_last, "cuda")
    lam = _lam(17, "cuda")
    index = torch.randint(0, 17, (17,), device="cuda")
    h, w = shape[-2:]
    boxes = torch.stack([torch.randint(0, h // 2, (17,)), torch.randint(0, w // 2, (17,)),
                         torch.randint(h // 2, h + 1, (17,)), torch.randint(w // 2, w + 1, (17,))], 1).cuda()
    mean, std = torch.tensor(MEAN, device="cuda"), torch.tensor(STD, device="cuda")
    scale = 1 / 255 if in_dtype == torch.uint8 else 1.0
    got = L.mix_images(x, lam, index, boxes=boxes, mean=mean, std=std, out_dtype=out_dtype, backend="triton")
    want = R.mix_images(x, lam, index, boxes, mean, std, scale, out_dtype)
    torch.testing.assert_close(got, want, **_tol(out_dtype, True))
    if in_dtype.is_floating_point:
        g = torch.randn(shape, device="cuda").to(out_dtype)
        got = _ops.mix_images_backward(g, lam, index, boxes, std, scale, in_dtype, "triton")
        want = _ops.mix_images_backward(g, lam, index, boxes, std, scale, in_dtype, "torch")
        torch.testing.assert_close(got, want, **_tol(in_dtype, True))


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_inplace_and_no_host_sync(dtype):
    lam, index = L.sample_mix(64, pairing="pairs", device="cuda")
    x = torch.randn(64, 3, 64, 64, device="cuda").to(dtype)
    want = R.mix_images(x, lam, index)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = x.clone()
        L.mix_images_(y, lam, index, backend="triton")
        out = L.mix_images(x, lam, index, backend="triton")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.testing.assert_close(y, want, **_tol(dtype, False))
    torch.testing.assert_close(out, want, **_tol(dtype, False))


@pytest.mark.parametrize("index", [[1, 2, 0], [1, 0, 0, 3], [2, 2, 1, 0]])
def test_inplace_mixes_only_mutual_pairs_without_validation(index):
    """With value checks off, a non-involutive index must not let two programs write the same
    sample: only mutual pairs (index[index[b]] == b, b < index[b]) mix, as in the CPU and CUDA
    kernels; everything else stays as it was."""
    dev = "cuda" if HAS_CUDA else "cpu"
    g = torch.Generator().manual_seed(0)
    B = len(index)
    x = torch.randn(B, 3, 4, 5, generator=g).to(dev)
    lam = torch.rand(B, generator=g).to(dev)
    idx = torch.tensor(index, device=dev)
    want = x.clone()
    for b, c in enumerate(index):
        if c > b and index[c] == b:
            want[b] = lam[b] * x[b] + (1 - lam[b]) * x[c]
            want[c] = lam[c] * x[c] + (1 - lam[c]) * x[b]
    got = x.clone()
    with L.validation("off"):
        L.mix_images_(got, lam, idx, backend="triton")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    if "cpu" in L.available_backends("cpu", op="mix_images_") and dev == "cpu":
        native = x.clone()
        with L.validation("off"):
            L.mix_images_(native, lam, idx, backend="cpu")
        torch.testing.assert_close(got, native, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_launches_on_a_non_current_device(backend):
    """Every launch is guarded: tensors on cuda:1 while cuda:0 is current mix, unmix and mix in
    place correctly (needs two GPUs)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    if backend not in L.available_backends("cuda", op="mix_images"):
        pytest.skip(f"backend {backend} not available")
    torch.cuda.set_device(0)
    dev = torch.device("cuda:1")
    x = torch.randn(4, 3, 8, 8, device=dev, requires_grad=True)
    lam, idx = torch.rand(4, device=dev), torch.tensor([1, 0, 3, 2], device=dev)
    out = L.mix_images(x, lam, idx, backend=backend)
    out.sum().backward()
    want = lam.view(-1, 1, 1, 1) * x.detach() + (1 - lam.view(-1, 1, 1, 1)) * x.detach()[idx]
    torch.testing.assert_close(out, want)
    y = x.detach().clone()
    L.mix_images_(y, lam, idx, backend=backend)
    torch.testing.assert_close(y, want)
    logits = torch.randn(6, 5, device=dev, requires_grad=True)
    L.seesaw_loss(logits, torch.randint(0, 5, (6,), device=dev), torch.ones(5, device=dev),
                  backend=backend).backward()
    torch.cuda.synchronize(dev)
    assert torch.cuda.current_device() == 0
