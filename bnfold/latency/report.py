"""Terminal output of a latency measurement: ``bnfold.textout`` tables, and rich's progress bar on a terminal.
JSON is ``BenchResult.to_dict``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .runner import SETTINGS, BenchResult, ProgressCallback
from ..text import change as _change, printable as safe, size as _size
from ..textout import SECTION, Out
from .stats import FASTER, NO_DIFFERENCE, Speedup

if TYPE_CHECKING:
    from rich.console import Console


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def _bound(value: float) -> str:
    """Three decimals, more if three would round a value other than 1 to 1.000 (a verdict may rest on it)."""
    for digits in range(3, 7):
        text = f"{value:.{digits}f}"
        if value == 1 or float(text) != 1:
            break
    return text


def _ratio(s: Speedup) -> str:
    return f"{_bound(s.ratio)}×"


def _interval(s: Speedup) -> str:
    return f"[{_bound(s.low)}, {_bound(s.high)}]" if s.bounded else "unbounded"


def _verdict(s: Speedup, out: Out) -> str:
    """The verdict; "no measurable difference" carries the resolution it was measured with."""
    if s.verdict != NO_DIFFERENCE:
        return out.paint(s.verdict, "green" if s.verdict == FASTER else "red")
    if not s.bounded:
        return f"{s.verdict} (too few samples: {s.n} {s.unit}, an interval needs {s.min_units})"
    return f"{s.verdict} (none beyond ±{(s.detectable - 1) * 100:.1f} %)"


def _checks(result: BenchResult, out: Out) -> str | None:
    """What was checked before timing, in a line (None when the result does not say)."""
    checks = result.checks
    outputs = checks.get("outputs")
    if outputs is None:
        return None
    if not outputs["checked"]:
        return (f"{out.paint('Outputs not compared', 'yellow')} (--no-check-outputs): the two models may compute "
                "different things; the speedups compare their latencies only")
    worst = max((o["max_abs"] for o in outputs["outputs"]), default=0.0)
    return (f"Checked before timing: {safe(checks.get('interface', ''))}; every output agrees on one seeded input "
            f"within tolerance ({safe(outputs['backend'])}; largest difference {worst:.2g})")


def render_bench(result: BenchResult, out: Out) -> None:
    """Everything ``bnfold bench`` prints: what was compared, the model figures, the latency tables."""
    folded = safe(result.folded) if result.folded else f"folded in memory ({result.folds} fold{'s' if result.folds != 1 else ''})"
    out.line(f"{out.paint('bnfold bench', 'bold')} {safe(result.original)} vs {folded}")
    b, a = result.before, result.after
    out.table(("", "original", "folded", "change"), [
        ("nodes", str(b.nodes), str(a.nodes), _change(b.nodes, a.nodes)),
        ("parameters", f"{b.parameters:,}", f"{a.parameters:,}", _change(b.parameters, a.parameters)),
        ("file size", _size(b.file_bytes), _size(a.file_bytes), _change(b.file_bytes, a.file_bytes))],
        title="Model", right=("", "original", "folded", "change"))
    render_latency(result, out)


def render_latency(result: BenchResult, out: Out) -> None:
    """The checks, latency and speedup tables (``optimize --bench`` appends these to its report)."""
    shapes = safe(", ".join(f"{k}={'x'.join(map(str, s))}" for k, s in result.inputs.items()))
    threads = result.threads if result.threads is not None else "onnxruntime's default"
    checked = _checks(result, out)
    if checked:
        out.line(checked)
    out.line(f"Latency: onnxruntime {result.onnxruntime}, {result.provider}, threads {threads}, inputs {shapes}, "
             f"seed {result.seed}; per setting up to {result.rounds} rounds, each a fresh session of each model "
             f"(creation timed), {result.warmup} warm-up runs of each, then interleaved pairs (ABBA order); "
             f"until {result.runs} pairs or {result.time_budget:g} s")
    rows = []
    for s in result.settings:
        for which in ("original", "folded"):
            lat, ses = s.latency[which], s.session[which]
            rows.append((s.name if which == "original" else "", which, str(lat.n), _ms(lat.median), _ms(lat.p90),
                         _ms(lat.p99), _ms(ses.median), str(ses.n)))
    out.table(("setting", "model", "runs", "median", "p90", "p99", "session", "n"), rows,
              title="Latency per run (ms)", right=("runs", "median", "p90", "p99", "session", "n"),
              caption="session: median time to create a session (n: sessions per model, two per round)")
    first = result.settings[0].speedup if result.settings else None
    each = f"{first.confidence:.2%}" if first else ""
    family = f"{first.family_confidence:.0%}" if first else ""
    speedups: list[tuple[str, ...] | None] = []
    for s in result.settings:
        for of, sp in (("run", s.speedup), ("session", s.session_speedup)):
            speedups.append((s.name if of == "run" else "", of, f"{sp.n} {sp.unit.removeprefix('ABBA ')}",
                             _ratio(sp), _interval(sp), _verdict(sp, out)))
        speedups.append(SECTION)
    out.table(("setting", "of", "over", "speedup", "interval", "verdict"), speedups,
              title=f"Speedup = median ratio original/folded; {each} intervals, {family} for all "
                    f"{2 * len(result.settings)} together (Bonferroni)", right=("speedup", "interval"),
              caption="over: the independent units (run: rounds, each the median of its ABBA blocks; session: "
                      "ABBA blocks of rounds); interval: exact order-statistic (sign-test) interval of the median; "
                      "±: the resolution, how far the interval reaches from the estimate (a smaller effect could "
                      "not have been seen)")
    for s in result.settings:
        stopped = (f"; stopped by the time budget after {len(s.first)} pairs in {len(set(s.rounds))} rounds"
                   if s.stopped_by == "time budget" else "")
        out.line(f"  {s.name} ({s.optimization_level}): {s.meaning}{stopped}")


@contextlib.contextmanager
def progress_bar(console: Console, runs: int) -> Iterator[ProgressCallback]:
    """A bar per setting, driven by the measuring child's events; yields the callback to pass on."""
    from rich import progress as bar

    columns = (bar.TextColumn("{task.description}"), bar.BarColumn(), bar.TextColumn("{task.fields[status]}"),
               bar.TimeElapsedColumn())
    with bar.Progress(*columns, console=console, transient=True) as progress:
        tasks = {name: progress.add_task(f"{name:<8}", total=runs, status="waiting") for name in SETTINGS}

        def on_event(event: dict) -> None:
            task = tasks.get(event.get("setting", ""))  # ("": no setting, no task)
            if task is None:
                return
            if event["event"] == "stage":
                progress.update(task, status=event.get("text", ""))
            elif event["event"] == "pair":
                # Whichever stopping rule is nearer drives the bar: pairs done, or time spent.
                done = max(event["pairs"], runs * min(1.0, event["elapsed"] / event["budget"]))
                progress.update(task, completed=min(done, runs), status=f"{event['pairs']} pairs")

        yield on_event
