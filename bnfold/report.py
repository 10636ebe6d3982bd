"""Human-readable rendering of an optimize Report (rich tables). JSON comes from ``Report.to_dict``."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .pipeline import Report
from .text import change as _change, count, markup_safe as safe, size as _size


#: Above this many rows a list is printed as plain lines: a rich table lays out every row first,
#: which took 12 s for the 20,000 folds of a synthetic chain (the fold itself took 9 s).
MAX_TABLE_ROWS = 200


def _rows(console: Console, title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Every row: a table when it is short, one tab-separated line per row when it is long."""
    if len(rows) <= MAX_TABLE_ROWS:
        table = Table(title=title, title_justify="left")
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    console.print(f"{title}, one per line: {' | '.join(columns)}")
    console.file.write("".join(f"  {' | '.join(row)}\n" for row in rows))


def _saving(s) -> str:
    if s is None or s.macs is None:
        return "unknown (no static shape)"
    return f"{count(s.macs)} MAC, {_size(s.activation_bytes)}"


def _total(savings, result) -> str:
    shapes = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in savings.shapes.items()) or "declared shapes"
    unknown = f" (and {savings.unknown} fold{'s' if savings.unknown != 1 else ''} unknown)" if savings.unknown else ""
    return (f"Saved per inference ({safe(shapes)}): {count(savings.macs)} multiply-adds and "
            f"{_size(savings.activation_bytes)} of activation traffic{unknown}; parameters "
            f"{_size(result.before.parameter_bytes)} → {_size(result.after.parameter_bytes)}")


def _eps(value: float) -> str:
    return "-" if value != value else f"{value:.2g}"


def render_validation(v, console: Console) -> None:
    """The verdict, how it was reached, and Polygraphy's figures per output (worst input set)."""
    words = {"passed": "[green]passed[/]", "failed": "[red]FAILED[/]", "unproven": "[yellow]could not prove the fold[/]"}
    console.print(f"Validation {words.get(v.verdict, v.verdict)}: {safe(v.backend)}, seed {v.seed}")
    if v.reason:
        console.print(f"  {'why' if v.verdict != 'failed' else 'worst'}: {safe(v.reason)}")
    if v.sets:
        shapes = ", ".join(f"{k}={'x'.join(map(str, s))}" for k, s in v.sets[0]["inputs"].items())
        labels = ", ".join(s["label"] for s in v.sets)
        console.print(f"  inputs: {len(v.sets)} set{'s' if len(v.sets) != 1 else ''} ({safe(labels)}), "
                      f"{safe(shapes)} (shapes: {safe(v.shapes_chosen)})")
    if not v.outputs:
        return
    from .tolerances import FAST_PASS_EPS

    table = Table(title_justify="left", caption=f"needed: the worst error in eps of the output's scale, the tolerance "
                  f"that would have been needed (the fast pass allows {FAST_PASS_EPS:.0f} for float32; beyond it the "
                  "exact float64 answer decides). All figures: --json.", caption_justify="left")
    for col in ("output", "dtype", "scale", "max abs", "p99 abs", "needed", "worst set", "verdict"):
        table.add_column(col, justify="left" if col in ("output", "dtype", "worst set", "verdict") else "right")
    colors = {"passed": "green", "failed": "red"}
    for o in v.outputs:
        verdict = o.verdict if o.verdict not in colors else f"[{colors[o.verdict]}]{o.verdict}[/]"
        if o.stage and o.verdict in colors:
            verdict += f" ({o.stage})"
        table.add_row(safe(o.name), o.dtype, _eps(o.scale), _eps(o.max_abs), _eps(o.p99_abs), _eps(o.needed),
                      safe(o.worst_set), verdict)
    console.print(table)
    for o in v.outputs:
        if o.exact_folded is not None:
            console.print(f"  exact float64 answer, output '{safe(o.name)}': original {o.exact_original:.3g} "
                          f"from it, folded {o.exact_folded:.3g}")
        if o.verdict == "nondeterministic":
            console.print(f"[yellow]Note[/]: output '{safe(o.name)}' is not deterministic: two runs of the original "
                          f"differ by up to {o.self_diff:.3g}, so it was not compared.")
        elif o.verdict == "uninformative":
            console.print(f"[yellow]Note[/]: output '{safe(o.name)}' is zero or not finite everywhere on these "
                          "inputs: it passes whatever the fold did, so it proves nothing.")
    if v.reference.get("error"):
        console.print(f"  exact reference could not run: {safe(v.reference['error'])}")


def render(report: Report, console: Console) -> None:
    """Print folds, refusals, validation and before/after figures."""
    r = report.result
    target = safe(report.output) if report.written else "(nothing written)"
    console.print(f"[bold]bnfold optimize[/] {safe(report.input)} → {target}")

    if r.folds:
        saved = report.savings.folds if report.savings is not None else [None] * len(r.folds)
        _rows(console, f"Folded ({len(r.folds)})", ("node", "into", "rule", "graph", "saves per inference"),
              [(*map(safe, (f"{f.op} '{f.node}'", f"{f.into_op} '{f.into}'", f.rule, f.graph)), _saving(s))
               for f, s in zip(r.folds, saved)])
        if report.savings is not None:
            console.print(_total(report.savings, r))
    else:
        console.print("Folded: nothing")

    if r.refusals:
        _rows(console, f"Not folded ({len(r.refusals)})", ("node", "rule", "reason"),
              [tuple(map(safe, (f"{x.op} '{x.node}'", x.rule, x.reason))) for x in r.refusals])

    v = report.validation
    if v is None:
        console.print("Validation: not run" + (" (nothing folded)" if not r.folds else " (--no-validate)"))
    else:
        render_validation(v, console)

    table = Table(title="Model", title_justify="left")
    for col in ("", "before", "after", "change"):
        table.add_column(col, justify="right")
    assert r.before is not None and r.after is not None, "fold counts both"
    table.add_row("nodes", str(r.before.nodes), str(r.after.nodes), _change(r.before.nodes, r.after.nodes))
    table.add_row("parameters", f"{r.before.parameters:,}", f"{r.after.parameters:,}",
                  _change(r.before.parameters, r.after.parameters))
    table.add_row("file size", _size(report.input_bytes), _size(report.output_bytes),
                  _change(report.input_bytes, report.output_bytes))
    console.print(table)
    console.print("Time: " + ", ".join(f"{k} {v:.3f} s" for k, v in report.timings.items()))

    if report.bench is not None:
        from .latency.report import render_latency

        render_latency(report.bench, console)
    elif report.bench_error:
        console.print(f"[yellow]Latency not measured[/]: {safe(report.bench_error)}")
