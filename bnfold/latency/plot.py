"""``--plot FILE.png``: the latency distributions and the speedups with their intervals.

matplotlib is optional (``pip install 'bnfold[plot]'``) and imported only here, lazily. The figure
is drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it works
without a display and leaves a caller's own matplotlib state alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BnfoldError
from .runner import BenchResult

MISSING = "--plot needs matplotlib: pip install 'bnfold[plot]'"


def require_matplotlib() -> None:
    """BnfoldError (exit 2) when matplotlib is not installed; call it before measuring anything."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise BnfoldError(MISSING) from None


def check_destination(path: str | os.PathLike) -> None:
    """BnfoldError when ``path`` cannot receive the figure (checked before measuring)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise BnfoldError(f"{path}: --plot writes a PNG file; give a name ending in .png")
    if path.is_dir():
        raise BnfoldError(f"{path}: --plot needs a file name, and this is a directory")
    if not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise BnfoldError(f"{path}: the folder {path.parent} does not exist")


def plot_bench(result: BenchResult, path: str | os.PathLike) -> Path:
    """Write the figure to ``path`` (PNG): left, the per-run latencies of both models in each
    setting (box plots over the raw runs); right, each speedup with its interval, against 1."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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
    left.set_ylabel("latency per run (ms)")
    left.set_title("Latency per run (box: quartiles, whiskers: p1–p99)", fontsize=10)
    left.grid(axis="y", alpha=0.3)

    rows = [(f"{s.name}: per run", s.speedup) for s in result.settings]
    rows += [(f"{s.name}: session creation", s.session_speedup) for s in result.settings]
    for y, (_, sp) in enumerate(rows):
        colour = "#2a7ab9" if sp.low > 1 else "#c0392b" if sp.high < 1 else "#8c8c8c"
        right.errorbar([sp.ratio], [y], xerr=[[sp.ratio - sp.low], [sp.high - sp.ratio]], fmt="o", color=colour,
                       capsize=4)
        right.annotate(f"{sp.ratio:.3f} [{sp.low:.3f}, {sp.high:.3f}]", (sp.high, y), xytext=(6, 0),
                       textcoords="offset points", va="center", fontsize=8)
    right.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
    right.set_yticks(range(len(rows)), [label for label, _ in rows])
    right.invert_yaxis()
    right.margins(x=0.35)
    confidence = f"{rows[0][1].confidence:.0%}" if rows else "95%"
    right.set_xlabel("speedup = median(original) / median(folded)")
    right.set_title(f"Speedup with {confidence} bootstrap interval (> 1: folded faster)", fontsize=10)
    right.grid(axis="x", alpha=0.3)

    folded = result.folded or "folded in memory"
    figure.suptitle(f"{Path(result.original).name} vs {Path(folded).name if result.folded else folded} — "
                    f"onnxruntime {result.onnxruntime}, {result.provider}", fontsize=11)
    path = Path(path)
    figure.savefig(path, format="png", dpi=110)
    return path
