"""Terminal output of a latency measurement: rich tables and the progress bar. JSON is ``BenchResult.to_dict``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.table import Table

from ..report import _change, _size
from .runner import SETTINGS, BenchResult, ProgressCallback
from .stats import FASTER, SLOWER, Speedup


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _ratio(s: Speedup) -> str:
    return f"{s.ratio:.3f}×"


def _interval(s: Speedup) -> str:
    return f"[{s.low:.3f}, {s.high:.3f}]"


def _verdict(s: Speedup) -> str:
    colour = {FASTER: "green", SLOWER: "red"}.get(s.verdict)
    return f"[{colour}]{s.verdict}[/]" if colour else s.verdict


def render_bench(result: BenchResult, console: Console) -> None:
    """Everything ``bnfold bench`` prints: what was compared, the model figures, the latency tables."""
    folded = result.folded or (f"folded in memory ({result.folds} fold{'s' if result.folds != 1 else ''})")
    console.print(f"[bold]bnfold bench[/] {result.original} vs {folded}")
    table = Table(title="Model", title_justify="left")
    for col in ("", "original", "folded", "change"):
        table.add_column(col, justify="right")
    b, a = result.before, result.after
    table.add_row("nodes", str(b.nodes), str(a.nodes), _change(b.nodes, a.nodes))
    table.add_row("parameters", f"{b.parameters:,}", f"{a.parameters:,}", _change(b.parameters, a.parameters))
    table.add_row("file size", _size(b.file_bytes), _size(a.file_bytes), _change(b.file_bytes, a.file_bytes))
    console.print(table)
    render_latency(result, console)


def render_latency(result: BenchResult, console: Console) -> None:
    """The latency and speedup tables (``optimize --bench`` appends these to its report)."""
    shapes = ", ".join(f"{k}={'x'.join(map(str, s))}" for k, s in result.inputs.items())
    threads = result.threads if result.threads is not None else "onnxruntime's default"
    console.print(f"Latency: onnxruntime {result.onnxruntime}, {result.provider}, threads {threads}, inputs {shapes}, "
                  f"seed {result.seed}; per setting {result.warmup} warm-up runs of each model, then interleaved "
                  f"pairs (ABBA order) until {result.runs} pairs or {result.time_budget:g} s")
    table = Table(title="Latency per run (ms)", title_justify="left",
                  caption=f"session: median time to create a session, of {result.session_repeats}", caption_justify="left")
    for col in ("setting", "model", "runs", "median", "p90", "p99", "session"):
        table.add_column(col, justify="left" if col in ("setting", "model") else "right")
    for s in result.settings:
        for which in ("original", "folded"):
            lat = s.latency[which]
            table.add_row(s.name if which == "original" else "", which, str(lat.n), _ms(lat.median), _ms(lat.p90),
                          _ms(lat.p99), _ms(s.session[which].median))
    console.print(table)
    confidence = f"{result.settings[0].speedup.confidence:.0%}" if result.settings else "95%"
    table = Table(title=f"Speedup = median(original) / median(folded), {confidence} interval", title_justify="left",
                  caption="interval: paired bootstrap over the interleaved pairs", caption_justify="left")
    for col in ("setting", "of", "speedup", "interval", "verdict"):
        table.add_column(col, justify="right" if col in ("speedup", "interval") else "left", overflow="fold")
    for s in result.settings:
        table.add_row(s.name, "run", _ratio(s.speedup), _interval(s.speedup), _verdict(s.speedup))
        table.add_row("", "session", _ratio(s.session_speedup), _interval(s.session_speedup),
                      _verdict(s.session_speedup), end_section=True)
    console.print(table)
    for s in result.settings:
        stopped = f"; stopped by the time budget after {len(s.first)} pairs" if s.stopped_by == "time budget" else ""
        console.print(f"  {s.name} ({s.optimization_level}): {s.meaning}{stopped}")


@contextlib.contextmanager
def progress_bar(console: Console, runs: int) -> Iterator[ProgressCallback]:
    """A bar per setting, driven by the measuring child's events; yields the callback to pass on."""
    from rich import progress as bar

    columns = (bar.TextColumn("{task.description}"), bar.BarColumn(), bar.TextColumn("{task.fields[status]}"),
               bar.TimeElapsedColumn())
    with bar.Progress(*columns, console=console, transient=True) as progress:
        tasks = {name: progress.add_task(f"{name:<8}", total=runs, status="waiting") for name in SETTINGS}

        def on_event(event: dict) -> None:
            task = tasks.get(event.get("setting"))
            if task is None:
                return
            if event["event"] == "stage":
                progress.update(task, status=event.get("text", ""))
            elif event["event"] == "pair":
                # Whichever stopping rule is nearer drives the bar: pairs done, or time spent.
                done = max(event["pairs"], runs * min(1.0, event["elapsed"] / event["budget"]))
                progress.update(task, completed=min(done, runs), status=f"{event['pairs']} pairs")

        yield on_event
