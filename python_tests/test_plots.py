"""The benchmark plots (benchmarks/report.py) on made-up rows: the three files are written as
PNGs, and each figure shows what it should — the 1× line of the speed-up figure, the memory
axis named for what the device measures, one panel per op for the throughput, bars for data
at a single C and lines for several, readable units, no overlapping text."""
import struct
import sys
from itertools import combinations
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.report import DeviceInfo, Row, write_plots  # noqa: E402

CPU = DeviceInfo("AMD EPYC (2 cores)", "cpu-amd-epyc-2-cores", None, "2.13.0+cpu", "3.9.0")
GPU = DeviceInfo("NVIDIA H200", "nvidia-h200", 4800.0, "2.13.0+cu128", "3.9.0")
DATE = "2026-01-02"
FILES = ("speedup_vs_C.png", "memory_vs_C.png", "gbps_vs_size.png")
LOSS = ("seesaw_loss", "mixed_cross_entropy")
LOSS_PROVIDERS = ("reference", "compiled", "torch", "cpu")


def _row(op, mode, shape, dtype, provider, ms, ref_ms, model, mem=None, mem_kind=""):
    return Row(op, mode, shape, dtype, provider, median_ms=ms, p20_ms=ms * 0.9, p80_ms=ms * 1.1, samples=5,
               speedup_vs_reference=ref_ms / ms, mem_bytes=mem, mem_kind=mem_kind if mem is not None else "",
               model_bytes=model, gbps=model / ms / 1e6)


def make_rows(cs, mem_kind="saved", gbps_scale=1.0):
    """Loss ops at N=4096 and the classes ``cs`` (fwd+bwd; seesaw_loss also fwd and bwd), two
    image cases and a tiny lossmix_reduce (throughput in MB/s), plus a FAILED and a skipped row."""
    rows = []
    for op in LOSS:
        for c in cs:
            model = 8 * 4096 * c
            ref_ms = 1e-6 * model * 10 / gbps_scale
            times = {"reference": ref_ms, "compiled": ref_ms / 2, "torch": ref_ms * 1.25, "cpu": ref_ms / 20}
            for mode in (("fwd", "bwd", "fwd+bwd") if op == "seesaw_loss" else ("fwd+bwd",)):
                for p, ms in times.items():
                    # torch and cpu save exactly what the reference saves: equal series
                    mem = 81920 if p == "compiled" else 4 * 4096 * c
                    rows.append(_row(op, mode, {"N": 4096, "C": c}, "float32", p, ms, ref_ms, model, mem, mem_kind))
    shape = {"B": 64, "C": 3, "H": 224, "W": 224}
    for dtype, size in (("float32", 4), ("uint8", 1)):
        model = 2 * 64 * 3 * 224 * 224 * size
        ref_ms = 1e-6 * model / gbps_scale
        for p, f in (("reference", 1), ("compiled", 0.2), ("cpu", 0.05), ("torchvision", 0.5), ("clone", 0.1)):
            rows.append(_row("mix_images", "fwd", shape, dtype, p, ref_ms * f, ref_ms, model))
    ref_ms = 0.2
    for p, f in (("reference", 1), ("compiled", 1.5), ("lossmix_ext", 0.8)):
        rows.append(_row("lossmix_reduce", "fwd+bwd", {"N": 4096}, "float32", p, ref_ms * f, ref_ms, 81936,
                         16384, mem_kind))
    rows.append(Row("seesaw_loss", "fwd+bwd", {"N": 4096, "C": cs[0]}, "float32", "wrong", status="FAILED",
                    note="disagrees with the reference"))
    rows.append(Row("seesaw_loss", "-", {"N": 4096, "C": 32768}, "float32", "all", status="skipped", note="too big"))
    return rows


SINGLE_C = (1203,)
MULTI_C = (81, 1204, 4096)


def mixed_rows(mem_kind="saved", gbps_scale=1.0):
    """seesaw_loss at several C, mixed_cross_entropy at one: line and bar panels side by side."""
    return [r for r in make_rows(MULTI_C, mem_kind, gbps_scale) if r.op != "mixed_cross_entropy"] + \
        [r for r in make_rows(SINGLE_C, mem_kind, gbps_scale) if r.op == "mixed_cross_entropy"]


@pytest.fixture
def figures():
    import matplotlib.pyplot as plt
    made = []

    def build(rows, dev, name=None):
        """The figure ``name``, or ``{file name: figure}`` of all three."""
        figs = report._build_figures(rows, dev, DATE, None if name is None else [name])
        made.extend(figs.values())
        return figs if name is None else figs[name]
    yield build
    for fig in made:
        plt.close(fig)


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def _bars(ax):
    from matplotlib.patches import Rectangle
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def _png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24]), len(data)


def test_write_plots_writes_three_pngs(tmp_path):
    paths = write_plots(mixed_rows("peak", 300.0), str(tmp_path), GPU)
    assert [Path(p).name for p in paths] == list(FILES)
    for p in paths:
        (w, h), nbytes = _png_size(p)
        assert 600 <= w <= 3000 and 400 <= h <= 2500, (p, w, h)
        assert nbytes > 20_000, (p, nbytes)


def test_without_matplotlib_no_plots(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert write_plots(make_rows(SINGLE_C), str(tmp_path), CPU) == []
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("cs", [SINGLE_C, MULTI_C], ids=["single_C", "multi_C"])
def test_speedup_has_the_1x_line_and_a_title(figures, cs):
    fig = figures(make_rows(cs), CPU, "speedup_vs_C.png")
    for ax in _panels(fig):
        ones = [ln for ln in ax.get_lines() if ln.get_gid() == "same_as_reference"]
        assert len(ones) == 1 and list(ones[0].get_ydata()) == [1, 1]
    legend_texts = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert any("same as the eager reference" in t for t in legend_texts)
    assert "reference" not in legend_texts  # the reference is the 1× line, not a bar or a curve
    title = fig._suptitle.get_text()
    for part in ("Speed-up", "N=4096", "float32", "forward + backward", CPU.name, DATE):
        assert part in title, (part, title)


def test_single_c_is_a_grouped_bar_chart(figures):
    figs = figures(make_rows(SINGLE_C), CPU)
    (ax,) = _panels(figs["speedup_vs_C.png"])
    assert ax.get_xscale() == "linear"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(LOSS)        # one group per op
    assert len(_bars(ax)) == len(LOSS) * (len(LOSS_PROVIDERS) - 1)           # one bar per provider
    assert ax.get_title() == "C=1203"
    (ax,) = _panels(figs["memory_vs_C.png"])
    assert len(_bars(ax)) == len(LOSS) * len(LOSS_PROVIDERS)                 # the reference's memory too
    # every bar is labelled with its value
    labels = [t.get_text() for t in ax.texts]
    assert "80 KiB" in labels and labels.count("18.8 MiB") == 3 * len(LOSS)


def test_several_c_are_lines_on_log_c(figures):
    rows = make_rows(MULTI_C) + [r for r in make_rows(SINGLE_C) if r.op == "seesaw_module"]
    figs = figures(rows, CPU)
    for name in ("speedup_vs_C.png", "memory_vs_C.png"):
        panels = _panels(figs[name])
        assert [ax.get_title() for ax in panels] == list(LOSS)
        for ax in panels:
            assert ax.get_xscale() == "log" and not _bars(ax)
            curves = [ln for ln in ax.get_lines() if ln.get_gid() != "same_as_reference"]
            assert all(len(ln.get_xdata()) == len(MULTI_C) and ln.get_marker() not in (None, "None", "")
                       for ln in curves)
    # memory: torch and cpu save what the reference saves: drawn apart (offsets, line styles)
    # and named as equal series
    ax = _panels(figs["memory_vs_C.png"])[0]
    curves = {ln.get_label(): ln for ln in ax.get_lines()}
    assert {"torch (= reference)", "cpu (= reference)"} <= set(curves)
    xs = [tuple(curves[k].get_xdata()) for k in ("reference", "torch (= reference)", "cpu (= reference)")]
    assert len(set(xs)) == 3
    assert len({curves[k].get_linestyle() for k in ("reference", "torch (= reference)", "cpu (= reference)")}) == 3
    assert ax.get_yscale() == "log"  # 80 KiB to 64 MiB


def test_mixed_single_and_several_c(figures):
    panels = _panels(figures(mixed_rows(), CPU, "speedup_vs_C.png"))
    assert len(panels) == 2
    assert panels[0].get_xscale() == "log" and not _bars(panels[0])
    assert [t.get_text() for t in panels[1].get_xticklabels()] == ["mixed_cross_entropy"]
    assert len(_bars(panels[1])) == 3


@pytest.mark.parametrize("dev, kind, words", [(CPU, "saved", "saved for backward"),
                                              (GPU, "peak", "peak GPU memory allocated")], ids=["cpu", "cuda"])
@pytest.mark.parametrize("cs", [SINGLE_C, MULTI_C], ids=["single_C", "multi_C"])
def test_memory_axis_says_what_the_device_measures(figures, dev, kind, words, cs):
    fig = figures(make_rows(cs, kind), dev, "memory_vs_C.png")
    other = "peak" if kind == "saved" else "saved"
    for ax in _panels(fig):
        assert ax.get_ylabel().startswith(words), ax.get_ylabel()
        assert other not in ax.get_ylabel()
        if cs == SINGLE_C:
            assert ax.get_ylabel().endswith("(MiB)")  # 80 KiB .. 18.8 MiB
    title = fig._suptitle.get_text()
    assert ("saves" if kind == "saved" else "Peak GPU memory") in title and dev.name in title and DATE in title
    # without mem_kind (an older CSV), the device decides
    rows = make_rows(cs, kind)
    for r in rows:
        r.mem_kind = ""
    fig = figures(rows, dev, "memory_vs_C.png")
    assert _panels(fig)[0].get_ylabel().startswith(words)


def test_memory_units_follow_the_data(figures):
    rows = [r for r in make_rows((17,)) if r.op in LOSS and r.status == "ok"]  # tiny: 4 * 4096 * 17 B = 272 KiB
    for r in rows:
        r.mem_bytes = r.mem_bytes // 64  # 1.06 KiB .. 4.25 KiB
    (ax,) = _panels(figures(rows, CPU, "memory_vs_C.png"))
    assert ax.get_ylabel() == "saved for backward (KiB)"


@pytest.mark.parametrize("cs", [SINGLE_C, MULTI_C], ids=["single_C", "multi_C"])
def test_gbps_has_one_panel_per_op(figures, cs):
    rows = make_rows(cs)
    fig = figures(rows, CPU, "gbps_vs_size.png")
    panels = _panels(fig)
    ops = list(dict.fromkeys(r.op for r in rows if r.status == "ok"))
    assert [ax.get_title().split(" (")[0] for ax in panels] == ops
    by_op = dict(zip(ops, panels))
    assert fig._supylabel.get_text() == "achieved throughput"
    assert by_op["lossmix_reduce"].get_ylabel() == "MB/s"   # ~0.4 GB/s: in MB/s, not all at 0
    assert by_op["mix_images"].get_ylabel() == "GB/s"
    # mix_images: one group per dtype, a bar per provider
    assert len(_bars(by_op["mix_images"])) == 2 * 5
    assert [t.get_text().split("\n")[0] for t in by_op["mix_images"].get_xticklabels()] == ["float32", "uint8"]
    if cs == MULTI_C:
        ax = by_op["seesaw_loss"]
        assert ax.get_xscale() == "log" and not _bars(ax)
        assert "(fwd+bwd)" in ax.get_title()
    # the legend is outside every panel
    for lg in fig.legends:
        box = lg.get_window_extent(fig.canvas.get_renderer())
        assert not any(box.overlaps(ax.get_window_extent()) for ax in panels)


def test_peak_bandwidth_line_only_when_on_scale(figures):
    fig = figures(make_rows(SINGLE_C, "peak", gbps_scale=1000.0), GPU, "gbps_vs_size.png")
    peaks = {ax.get_title().split(" (")[0]: [ln for ln in ax.get_lines() if ln.get_gid() == "peak_bandwidth"]
             for ax in _panels(fig)}
    assert peaks["seesaw_loss"] and peaks["mix_images"]  # within 10x of the peak
    assert not peaks["lossmix_reduce"]                   # 0.4 GB/s: the line would flatten the bars
    assert "4800 GB/s" in fig._suptitle.get_text()


def test_provider_colours_are_the_same_in_every_figure(figures):
    from matplotlib.colors import to_hex
    figs = figures(make_rows(SINGLE_C), CPU)
    colours = {}
    for fig in figs.values():
        for lg in fig.legends:
            for handle, text in zip(lg.legend_handles if hasattr(lg, "legend_handles") else lg.legendHandles,
                                    lg.get_texts()):
                if text.get_text() in LOSS_PROVIDERS:
                    colours.setdefault(text.get_text(), set()).add(to_hex(handle.get_facecolor()))
    assert set(colours) == set(LOSS_PROVIDERS)
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({next(iter(c)) for c in colours.values()}) == len(LOSS_PROVIDERS)
    assert report._provider_colour("some_new_provider") == report._provider_colour("some_new_provider")


@pytest.mark.parametrize("mixed", [False, True], ids=["single_C", "mixed"])
def test_no_text_overlaps(figures, mixed):
    """Titles, axis labels, tick labels, bar labels and legend entries do not overlap."""
    for name, fig in figures(mixed_rows() if mixed else make_rows(SINGLE_C), CPU).items():
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        texts = [fig._suptitle] + ([fig._supylabel] if fig._supylabel else [])
        for ax in _panels(fig):
            texts += [ax.title, ax.xaxis.label, ax.yaxis.label] + list(ax.texts)
            box = ax.get_window_extent(r)
            texts += [t for t in ax.get_xticklabels() if t.get_text() and  # ticks in view only
                      box.x0 - 1 <= t.get_window_extent(r).x0 + t.get_window_extent(r).width / 2 <= box.x1 + 1]
            texts += [t for t in ax.get_yticklabels() if t.get_text() and
                      box.y0 - 1 <= t.get_window_extent(r).y0 + t.get_window_extent(r).height / 2 <= box.y1 + 1]
        for lg in fig.legends + [ax.get_legend() for ax in _panels(fig) if ax.get_legend()]:
            texts += list(lg.get_texts())
        boxes = [(t.get_text(), t.get_window_extent(r).expanded(0.97, 0.9)) for t in texts
                 if t.get_visible() and t.get_text()]
        clashes = [(a, b) for (a, ba), (b, bb) in combinations(boxes, 2) if ba.overlaps(bb)]
        assert not clashes, (name, clashes[:5])
