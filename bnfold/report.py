"""Human-readable rendering of an optimize Report (``bnfold.textout`` tables). JSON comes from ``Report.to_dict``."""

from __future__ import annotations

from .pipeline import Report
from .text import change as _change, count, printable as safe, size as _size
from .textout import Out


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


def render_validation(v, out: Out) -> None:
    """The verdict, how it was reached, and Polygraphy's figures per output (worst input set)."""
    words = {"passed": out.paint("passed", "green"), "failed": out.paint("FAILED", "red"),
             "unproven": out.paint("could not prove the fold", "yellow")}
    how = f"{safe(v.backend)}, seed {v.seed}" if v.backend else f"seed {v.seed}"
    out.line(f"Validation {words.get(v.verdict, safe(v.verdict))}: {how}")
    if v.reason:
        out.line(f"  {'why' if v.verdict != 'failed' else 'worst'}: {safe(v.reason)}")
    if v.sets:
        shapes = ", ".join(f"{k}={'x'.join(map(str, s))}" for k, s in v.sets[0]["inputs"].items())
        labels = ", ".join(s["label"] for s in v.sets)
        out.line(f"  inputs: {len(v.sets)} set{'s' if len(v.sets) != 1 else ''} ({safe(labels)}), "
                 f"{safe(shapes)} (shapes: {safe(v.shapes_chosen)})")
    if not v.outputs:
        return
    from .tolerances import FAST_PASS_EPS

    colors = {"passed": "green", "failed": "red"}
    rows = []
    for o in v.outputs:
        verdict = safe(o.verdict) if o.verdict not in colors else out.paint(o.verdict, colors[o.verdict])
        if o.stage and o.verdict in colors:
            verdict += f" ({safe(o.stage)})"
        rows.append((safe(o.name), safe(o.dtype), _eps(o.scale), _eps(o.max_abs), _eps(o.p99_abs), _eps(o.needed),
                     safe(o.worst_set), verdict))
    out.table(("output", "dtype", "scale", "max abs", "p99 abs", "needed", "worst set", "verdict"), rows,
              right=("scale", "max abs", "p99 abs", "needed"),
              caption=f"needed: the worst error in eps of the output's scale, the tolerance that would have been "
                      f"needed (the fast pass allows {FAST_PASS_EPS:.0f} for float32; beyond it the exact float64 "
                      "answer decides). All figures: --json.")
    for o in v.outputs:
        if o.exact_folded is not None:
            out.line(f"  exact float64 answer, output '{safe(o.name)}': original {o.exact_original:.3g} "
                     f"from it, folded {o.exact_folded:.3g}")
        if o.verdict == "nondeterministic":
            out.line(f"{out.paint('Note', 'yellow')}: output '{safe(o.name)}' is not deterministic: two runs of "
                     f"the original differ by up to {o.self_diff:.3g}, so it was not compared.")
        elif o.verdict == "uninformative":
            out.line(f"{out.paint('Note', 'yellow')}: output '{safe(o.name)}' is zero or not finite everywhere on "
                     "these inputs: it passes whatever the fold did, so it proves nothing.")
    if v.reference.get("error"):
        out.line(f"  exact reference could not run: {safe(v.reference['error'])}")


def render(report: Report, out: Out) -> None:
    """Print folds, refusals, validation and before/after figures."""
    r = report.result
    target = safe(report.output) if report.written else "(nothing written)"
    out.line(f"{out.paint('bnfold optimize', 'bold')} {safe(report.input)} → {target}")

    if r.folds:
        saved = report.savings.folds if report.savings is not None else [None] * len(r.folds)
        out.table(("node", "into", "rule", "graph", "saves per inference"),
                  [(*map(safe, (f"{f.op} '{f.node}'", f"{f.into_op} '{f.into}'", f.rule, f.graph)), _saving(s))
                   for f, s in zip(r.folds, saved)], title=f"Folded ({len(r.folds)})")
        if report.savings is not None:
            out.line(_total(report.savings, r))
    else:
        out.line("Folded: nothing")

    if r.refusals:
        out.table(("node", "rule", "reason"),
                  [tuple(map(safe, (f"{x.op} '{x.node}'", x.rule, x.reason))) for x in r.refusals],
                  title=f"Not folded ({len(r.refusals)})")

    v = report.validation
    if v is None:
        out.line("Validation: not run" + (" (nothing folded)" if not r.folds else " (--no-validate)"))
    else:
        render_validation(v, out)

    assert r.before is not None and r.after is not None, "fold counts both"
    out.table(("", "before", "after", "change"), [
        ("nodes", str(r.before.nodes), str(r.after.nodes), _change(r.before.nodes, r.after.nodes)),
        ("parameters", f"{r.before.parameters:,}", f"{r.after.parameters:,}",
         _change(r.before.parameters, r.after.parameters)),
        ("file size", _size(report.input_bytes), _size(report.output_bytes),
         _change(report.input_bytes, report.output_bytes))], title="Model", right=("", "before", "after", "change"))
    out.line("Time: " + ", ".join(f"{k} {v:.3f} s" for k, v in report.timings.items()))

    if report.bench is not None:
        from .latency.report import render_latency

        render_latency(report.bench, out)
    elif report.bench_error:
        out.line(f"{out.paint('Latency not measured', 'yellow')}: {safe(report.bench_error)}")
