"""``--plot FILE.png``: the latency distributions and the speedups with their intervals.

matplotlib is optional (``pip install 'bnfold[plot]'``) and imported only here, lazily. The figure
is drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it works
without a display and leaves a caller's own matplotlib state alone.

Everything that can be known before measuring is checked before measuring (``require_matplotlib``,
``check_destination``: a PNG name, an existing folder this process can create files in, an existing
file it can overwrite); the command prints its results before drawing, so a plot that still fails
(the folder removed meanwhile, a full disk) costs the figure only.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from ..errors import BnfoldError, OutputError, UsageError
from .runner import BenchResult

MISSING = "--plot needs matplotlib: pip install 'bnfold[plot]'"


def require_matplotlib() -> None:
    """BnfoldError (exit 2) when matplotlib is not installed; call it before measuring anything."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise UsageError(MISSING) from None


def check_destination(path: str | os.PathLike) -> None:
    """BnfoldError when ``path`` cannot receive the figure (checked before measuring)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise OutputError(f"{path}: --plot writes a PNG file; give a name ending in .png")
    if path.is_dir():
        raise OutputError(f"{path}: --plot needs a file name, and this is a directory")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise OutputError(f"{path}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise OutputError(f"{path}: {folder} is not a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{path}: the file exists and cannot be overwritten")
    try:  # whether a file can be created there: permissions, read-only file systems, quotas all say so
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".bnfold-plot-", suffix=".png"):
            pass
    except OSError as exc:
        raise OutputError(f"{path}: cannot write in the folder {folder} ({exc.strerror or exc})") from None


def plot_bench(result: BenchResult, path: str | os.PathLike) -> Path:
    """Write the figure to ``path`` (PNG): left, the per-run latencies of both models in each
    setting (box plots over the raw runs); right, each speedup with its interval, against 1."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, width_ratios=[3, 2])

    samples, labels, colours = [], [], []
    for s in result.settings:
        for which, colour in (("original", "#8c8c8c"), ("folded", "#2a7ab9")):
            samples.append(s.original_ms if which == "original" else s.folded_ms)
            labels.append(f"{s.name}\n{which}")
            colours.append(colour)
    boxes = left.boxplot(samples, whis=(1, 99), showfliers=True, patch_artist=True,
                         medianprops={"color": "black"}, flierprops={"markersize": 3, "alpha": 0.5})
    left.set_xticks(range(1, len(labels) + 1), labels)
    for patch, colour in zip(boxes["boxes"], colours):
        patch.set_facecolor(colour)
        patch.set_alpha(0.6)
    left.set_yscale("log")  # a few slow outliers would otherwise flatten every box
    # Plain numbers, not powers of ten; in-between ticks labelled as far as there is room.
    left.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    left.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: _minor_label(v, left.get_ylim())))
    left.set_ylabel("latency per run (ms, log scale)")
    left.set_title("Latency per run (box: quartiles, whiskers: p1–p99)", fontsize=10)
    left.grid(axis="y", alpha=0.3)

    rows = [(f"{s.name}: per run", s.speedup) for s in result.settings]
    rows += [(f"{s.name}: session creation", s.session_speedup) for s in result.settings]
    for y, (_, sp) in enumerate(rows):
        colour = "#2a7ab9" if sp.low > 1 else "#c0392b" if sp.high < 1 else "#8c8c8c"
        if sp.bounded:
            right.errorbar([sp.ratio], [y], xerr=[[sp.ratio - sp.low], [sp.high - sp.ratio]], fmt="o",
                           color=colour, capsize=4)
            label = f"{sp.ratio:.3f} [{sp.low:.3f}, {sp.high:.3f}]"
        else:  # too few units for any interval: the estimate alone, and why
            right.plot([sp.ratio], [y], "o", color=colour, fillstyle="none")
            label = f"{sp.ratio:.3f}, no interval ({sp.n} {sp.unit} < {sp.min_units})"
        right.annotate(label, (sp.high if sp.bounded else sp.ratio, y), xytext=(6, 0), textcoords="offset points",
                       va="center", fontsize=8)
    right.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
    right.set_xscale("log")  # a ratio and its inverse sit at equal distances from 1
    lows = [min(sp.low if sp.bounded else sp.ratio, 1.0) for _, sp in rows] or [1.0]
    highs = [max(sp.high if sp.bounded else sp.ratio, 1.0) for _, sp in rows] or [1.0]
    span = max(max(highs), 1 / min(lows), 1.05)
    lo, hi = 1 / span ** 1.15, span ** 1.6  # room on the right for the labels
    right.set_xlim(lo, hi)
    ticks = _ticks(lo, hi)
    right.set_xticks(ticks, [f"{t:g}" for t in ticks])
    right.xaxis.set_minor_formatter(NullFormatter())
    right.set_yticks(range(len(rows)), [label for label, _ in rows])
    right.invert_yaxis()
    family = f"{rows[0][1].family_confidence:.0%}" if rows else "95%"
    right.set_xlabel("median ratio original / folded, log scale")
    right.set_title(f"Speedup (> 1: folded faster), intervals {family} jointly", fontsize=10)
    right.grid(axis="x", alpha=0.3)

    folded = result.folded or "folded in memory"
    figure.suptitle(f"{Path(result.original).name} vs {Path(folded).name if result.folded else folded} — "
                    f"onnxruntime {result.onnxruntime}, {result.provider}", fontsize=11)
    path = Path(path)
    figure.savefig(path, format="png", dpi=110)
    return path


def _ticks(lo: float, hi: float) -> list[float]:
    """Readable ticks for a log axis from ``lo`` to ``hi``: 1, then candidates outwards from it,
    each far enough (in log distance) from the last one kept that the labels do not overlap."""
    gap = (math.log(hi) - math.log(lo)) / 9
    kept = [1.0]
    for side in ((1.05, 1.1, 1.25, 1.5, 2, 3, 4, 6, 10, 20, 50, 100),
                 (0.95, 0.9, 0.8, 0.67, 0.5, 0.33, 0.25, 0.17, 0.1, 0.05, 0.02, 0.01)):
        last = 1.0
        for t in side:
            if lo <= t <= hi and abs(math.log(t) - math.log(last)) >= gap:
                kept.append(t)
                last = t
    return sorted(kept)


def _minor_label(value: float, limits: tuple[float, float]) -> str:
    """Label for a minor tick of a log axis: all of them within a decade, 2 and 5 within three, else none."""
    decades = math.log10(limits[1] / limits[0])
    mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9), 6)
    if decades < 1 or (decades < 3 and mantissa in (2, 5)):
        return f"{value:g}"
    return ""
