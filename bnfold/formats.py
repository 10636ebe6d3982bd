"""Reports for CI: GitHub-flavoured markdown and GitHub Actions workflow commands.

Pure functions from what ``optimize`` and ``check`` return to text; the CLI prints it
(``--format markdown``, ``--format github``). Markdown is for a pull request comment or
``$GITHUB_STEP_SUMMARY``: a heading, a summary line, then tables (folds, refusals with reasons,
validation per output, the model before/after; for several files a table with one row per file;
for ``check`` one row per finding).

Names come from the model or the file system, and the model's author chose them. In markdown a
name is a code span (``printable`` first, so it stays one line; a fence longer than any run of
backticks inside it; in a table cell each ``|`` written ``\\|``, which GFM reads as a pipe of the
cell whatever precedes it): nothing in it is markup, HTML, an autolink, a mention or an emoji.
Prose that carries names (a refusal's reason, an error) has every character that markdown, GFM
tables or GitHub read as markup escaped with a backslash (``<`` and ``&`` included: no HTML, no
entity). Workflow commands use GitHub's escapes (``text.gh_data``, ``text.gh_property``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .text import change, printable, size

#: ASCII punctuation that CommonMark, GFM tables and GitHub's extensions (strikethrough, math)
#: read as markup inside a line; each is written with a backslash (CommonMark lets any ASCII
#: punctuation be escaped so). Line-start constructs (``#``, ``-``, ``1.``) cannot occur: every
#: escaped text is inside a line this module began.
_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&$!])")


def escape(text: str) -> str:
    """``text`` as inert markdown prose: one line (control characters escaped), no markup, no HTML."""
    return _SPECIAL.sub(r"\\\1", printable(text))


def code(text: str, *, cell: bool = True) -> str:
    """``text`` as a markdown code span (in a table ``cell``, ``|`` escaped as GFM requires there).

    The fence is one backtick longer than the longest run inside; a space pads content that
    starts or ends with a backtick or a space (CommonMark strips one from each side).
    """
    text = printable(text)
    if not text:
        return "*(empty)*"
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    if text.strip(" ") and (text[0] in "` " or text[-1] in "` "):
        text = f" {text} "
    if cell:
        text = text.replace("|", "\\|")
    return f"{fence}{text}{fence}"


def _named(op: str, name: str) -> str:
    """``BatchNormalization `bn1``` for a table cell."""
    return f"{escape(op)} {code(name)}"


def _graph(name: str) -> str:
    """The graph a node is in: ``main``, or a subgraph's or function's name (the model's text)."""
    return "main" if name == "main" else code(name)


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[str] = ()) -> list[str]:
    """A GFM table; ``right``: the columns aligned right (numbers). Cells are markdown already."""
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---:" if c in right else "---" for c in columns) + "|"
    return [head, rule, *("| " + " | ".join(row) + " |" for row in rows)]


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _count(n: float) -> str:
    from .text import count  # the text report's wording: 16.4K

    return count(n)


def _number(value: Any) -> str:
    """A figure of the validation table (``.2g``; ``-`` for NaN or none; JSON's "Infinity" as inf)."""
    if value is None or value == "NaN" or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, str):
        return {"Infinity": "inf", "-Infinity": "-inf"}.get(value, escape(value))
    return f"{value:.2g}"


def _doc(report) -> dict:
    """The ``--json`` document of an optimize report (a ``pipeline.Report``, or that document already)."""
    return report if isinstance(report, dict) else report.to_dict()


# -- optimize ----------------------------------------------------------------------------------

_VERDICT_WORDS = {"passed": "passed", "failed": "FAILED", "unproven": "could not prove the fold"}


def _verdict_line(doc: dict) -> str:
    v = doc.get("validation")
    if v is None:
        return "Validation not run" + (" (nothing folded)" if not doc["folds"] else " (--no-validate)")
    words = f"**Validation {_VERDICT_WORDS.get(v['verdict'], escape(v['verdict']))}**"
    if v["verdict"] != "passed" and v.get("reason"):
        words += f" ({escape(v['reason'])})"
    return words


def _written(doc: dict) -> str:
    if doc["written"]:
        return f"written → {code(doc['output'], cell=False)}"
    return "nothing written" + (" (--accept-unproven writes it)" if doc.get("verdict") == "unproven" else "")


def _savings_line(doc: dict) -> str | None:
    s = doc.get("savings")
    if s is None:
        return None
    shapes = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in s["shapes"].items()) or "declared shapes"
    unknown = f" (and {s['unknown']} fold{'s' if s['unknown'] != 1 else ''} unknown)" if s["unknown"] else ""
    return (f"Saved per inference ({escape(shapes)}): {_count(s['macs'])} multiply-adds and "
            f"{size(s['activation_bytes'])} of activation traffic{unknown}; parameters "
            f"{size(doc['before'].get('parameter_bytes'))} → {size(doc['after'].get('parameter_bytes'))}")


def _saving(s: dict | None) -> str:
    if s is None or s.get("macs") is None:
        return "unknown (no static shape)"
    return f"{_count(s['macs'])} MAC, {size(s['activation_bytes'])}"


def _validation_lines(v: dict, level: int) -> list[str]:
    lines = [f"{'#' * level} Validation: {_VERDICT_WORDS.get(v['verdict'], escape(v['verdict']))}", ""]
    how = f"seed {v.get('seed', 0)}"
    if v.get("backend"):
        how = f"{escape(v['backend'])}, {how}"
    sets = v.get("sets") or []
    if sets:
        shapes = ", ".join(f"{k}={'x'.join(map(str, s))}" for k, s in sets[0]["inputs"].items())
        labels = ", ".join(s["label"] for s in sets)
        how += (f"; inputs: {_plural(len(sets), 'set')} ({escape(labels)}), {escape(shapes)} "
                f"(shapes: {escape(v.get('shapes_chosen', ''))})")
    lines.append(how)
    if v.get("reason"):
        lines += ["", f"{'Worst' if v['verdict'] == 'failed' else 'Why'}: {escape(v['reason'])}"]
    outputs = v.get("outputs") or []
    if outputs:
        rows = []
        for o in outputs:
            verdict = escape(o["verdict"]) + (f" ({escape(o['stage'])})" if o.get("stage") and o["verdict"] in
                                              ("passed", "failed") else "")
            rows.append((code(o["name"]), escape(o["dtype"]), _number(o.get("scale")), _number(o.get("max_abs")),
                         _number(o.get("p99_abs")), _number(o.get("needed")), escape(o.get("worst_set") or ""),
                         verdict))
        lines += ["", *_table(("output", "dtype", "scale", "max abs", "p99 abs", "needed", "worst set", "verdict"),
                              rows, right=("scale", "max abs", "p99 abs", "needed"))]
        notes = []
        for o in outputs:
            if o.get("exact_folded") is not None:
                notes.append(f"exact float64 answer, output {code(o['name'], cell=False)}: original "
                             f"{_number(o['exact_original'])} from it, folded {_number(o['exact_folded'])}")
            if o["verdict"] == "nondeterministic":
                notes.append(f"output {code(o['name'], cell=False)} is not deterministic: two runs of the original "
                             f"differ by up to {_number(o.get('self_diff'))}, so it was not compared")
            elif o["verdict"] == "uninformative":
                notes.append(f"output {code(o['name'], cell=False)} is zero or not finite everywhere on these "
                             "inputs: it passes whatever the fold did, so it proves nothing")
        lines += [""] + [f"- {n}" for n in notes] if notes else []
    error = (v.get("reference") or {}).get("error")
    if error:
        lines += ["", f"Exact reference could not run: {escape(error)}"]
    return lines


def _model_table(doc: dict) -> list[str]:
    before, after = doc["before"], doc["after"]
    rows = []
    for label, key, fmt in (("nodes", "nodes", str), ("parameters", "parameters", "{:,}".format),
                            ("parameter bytes", "parameter_bytes", size), ("file size", "file_bytes", size)):
        b, a = before.get(key), after.get(key)
        if b is None:
            continue
        rows.append((label, fmt(b), "-" if a is None else fmt(a), change(b, a)))
    return _table(("", "before", "after", "change"), rows, right=("before", "after", "change"))


def _report_sections(doc: dict, level: int) -> list[str]:
    """Folds, refusals, validation and the model table of one report, headings at ``level``."""
    h = "#" * level
    lines: list[str] = []
    folds, refusals = doc["folds"], doc["refusals"]
    if folds:
        saved = (doc.get("savings") or {}).get("folds") or [None] * len(folds)
        rows: list[tuple[str, ...]] = [
            (_named(f["op"], f["node"]), _named(f["into_op"], f["into"]), escape(f["rule"]), _graph(f["graph"]),
             _saving(s)) for f, s in zip(folds, saved, strict=True)]
        lines += [f"{h} Folded ({len(folds)})", "",
                  *_table(("node", "into", "rule", "graph", "saves per inference"), rows), ""]
        total = _savings_line(doc)
        if total:
            lines += [total, ""]
    if refusals:
        rows = [(_named(r["op"], r["node"]), escape(r["rule"]), escape(r["reason"])) for r in refusals]
        lines += [f"{h} Not folded ({len(refusals)})", "", *_table(("node", "rule", "reason"), rows), ""]
    if doc.get("validation") is not None:
        lines += [*_validation_lines(doc["validation"], level), ""]
    lines += [f"{h} Model", "", *_model_table(doc), ""]
    return lines


def _summary_line(doc: dict) -> str:
    before, after = doc["before"], doc["after"]
    nodes = f"nodes {before['nodes']} → {after['nodes']}"
    if before["nodes"] != after["nodes"]:
        nodes += f" ({change(before['nodes'], after['nodes'])})"
    return (f"{_verdict_line(doc)} · {_plural(len(doc['folds']), 'fold')}, {_plural(len(doc['refusals']), 'refusal')}"
            f" · {nodes} · {_written(doc)}")


def optimize_markdown(report) -> str:
    """One optimize report (``pipeline.Report`` or its JSON document) as markdown."""
    doc = _doc(report)
    target = f" → {code(doc['output'], cell=False)}" if doc["written"] else ""
    lines = [f"## bnfold optimize {code(doc['input'], cell=False)}{target}", "", _summary_line(doc), "",
             *_report_sections(doc, 3)]
    if doc.get("seconds"):
        lines += ["Time: " + ", ".join(f"{k} {v:.3f} s" for k, v in doc["seconds"].items()), ""]
    bench = doc.get("bench")
    if bench:
        lines += [*_bench_lines(bench), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _bench_lines(bench: dict) -> list[str]:
    """``optimize --bench``: the speedups with their intervals (every figure: --json)."""
    if "error" in bench:
        return [f"Latency not measured: {escape(bench['error'])}"]
    rows = []
    for setting in bench.get("settings", []):
        for of, key in (("run", "speedup"), ("session", "session_speedup")):
            sp = setting.get(key) or {}
            if sp.get("ratio") is None:
                continue
            bounded = sp.get("ci_low") is not None and sp.get("ci_high") is not None
            rows.append((escape(setting["name"]), of, f"{sp['ratio']:.3f}×",
                         f"[{sp['ci_low']:.3f}, {sp['ci_high']:.3f}]" if bounded else "unbounded",
                         escape(sp.get("verdict", ""))))
    if not rows:
        return ["Latency: see --json"]
    return ["### Latency", "", *_table(("setting", "of", "speedup", "interval", "verdict"), rows,
                                        right=("speedup",))]


_STATUS = {"written": "written", "validation failed": "validation FAILED", "not proven": "not proven",
           "unusable": "unusable", "rolled back": "rolled back", "not started": "not started"}


def batch_markdown(outcomes: Sequence, interrupted=None) -> str:
    """Several optimize outcomes (``batch.Outcome``): the summary table as the text report has it,
    its totals, then each file's folds, refusals, validation and model table."""
    from . import batch

    s = batch.summary(list(outcomes), interrupted).to_dict()
    rows = []
    for o in outcomes:
        d = o.to_dict()
        status = _STATUS.get(d["status"], escape(d["status"]))
        if d["written"] and d.get("output"):
            status = f"written → {code(d['output'])}"
        r = None if o.report is None else _doc(o.report)
        if r is None:
            rows.append((code(o.input), "-", "-", "-", "-", status))
            continue
        verdict = "not run" if r["validation"] is None else _VERDICT_WORDS.get(r["validation"]["verdict"], "unproven")
        rows.append((code(o.input), str(len(r["folds"])), str(len(r["refusals"])), verdict,
                     f"{r['before']['nodes']} → {r['after']['nodes']}", status))
    totals = (f"{_plural(s['files'], 'file')}: {s['written']} written, {s['validation_failed']} failed validation, "
              f"{s['unproven']} not proven, {s['unusable']} unusable; {_plural(s['folds'], 'fold')}, "
              f"{_plural(s['refusals'], 'refusal')}")
    lines = [f"## bnfold optimize: {_plural(s['files'], 'file')}", "", totals, ""]
    if interrupted is not None:
        lines += [f"{escape(str(interrupted))}: {s['rolled_back']} rolled back (nothing written), "
                  f"{s['not_started']} not started", ""]
    lines += [*_table(("file", "folds", "refusals", "validation", "nodes before → after", "status"), rows,
                      right=("folds", "refusals")), ""]
    errors = [(code(o.input), escape(" ".join((o.error or "").split()))) for o in outcomes if o.error]
    if errors:
        lines += ["### Errors", "", *_table(("file", "error"), errors), ""]
    for o in outcomes:
        if o.report is not None:
            doc = _doc(o.report)
            lines += [f"### {code(o.input, cell=False)}", "", _summary_line(doc), "", *_report_sections(doc, 4)]
    return "\n".join(lines).rstrip("\n") + "\n"


# -- check -------------------------------------------------------------------------------------


def check_markdown(checks: Sequence, *, verbose: bool = False, interrupted=None) -> str:
    """``bnfold check`` results (``check.FileCheck``) as markdown: what it found, per file and BN,
    as the text output gives it; files that could not be read; with ``verbose`` what stays, and why."""
    from .check import ROLLED_BACK

    read = [c for c in checks if not c.unreadable]
    found = [c for c in read if c.findings and not c.fixed]
    fixed = [c for c in checks if c.fixed]
    failed = [c for c in checks if c.error and not c.unreadable]
    unreadable = [c for c in checks if c.unreadable]
    findings = sum(len(c.findings) for c in found)
    parts = [f"{_plural(findings, 'foldable pattern')} in {len(found)} of {_plural(len(read), 'file')}" if findings
             else f"Nothing to fold in {_plural(len(read), 'file')}"]
    if fixed:
        parts.append(f"{len(fixed)} fixed ({sum(len(c.findings) for c in fixed)} folded)")
    if failed:
        parts.append(f"{len(failed)} not fixed")
    if unreadable:
        parts.append(f"{len(unreadable)} unreadable")
    lines = ["## bnfold check", "", ("**" + parts[0] + "**" if findings else parts[0]) +
             "".join(f" · {p}" for p in parts[1:]), ""]
    if interrupted is not None:
        stopped = [(code(c.path), escape(c.interrupted + ("; file left untouched" if c.interrupted == ROLLED_BACK
                                                          else ""))) for c in checks if c.interrupted]
        lines += [f"Stopped by {escape(str(interrupted))}", "", *_table(("file", "status"), stopped), ""]
    if found:
        rows = [(code(c.path), _named(f.op, f.node), _named(f.into_op, f.into), escape(f.rule), _graph(f.graph))
                for c in found for f in c.findings]
        lines += ["### Foldable", "", *_table(("file", "node", "can fold into", "rule", "graph"), rows), ""]
    if fixed:
        rows = [(code(c.path), _named(f.op, f.node), _named(f.into_op, f.into), escape(f.rule), _graph(f.graph))
                for c in fixed for f in c.findings]
        lines += ["### Fixed", "", *_table(("file", "node", "folded into", "rule", "graph"), rows), ""]
    errors = [(code(c.path), escape(" ".join(c.error.split()))) for c in checks if c.error]
    if errors:
        lines += ["### Errors", "", *_table(("file", "error"), errors), ""]
    if verbose:
        rows = [(code(c.path), _named(r.op, r.node), escape(r.rule), escape(r.reason), _graph(r.graph))
                for c in read for r in c.refusals]
        if rows:
            lines += ["### Left in place", "", *_table(("file", "node", "rule", "reason", "graph"), rows), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# -- GitHub Actions workflow commands ------------------------------------------------------------


def _command(level: str, path: str, message: str, title: str = "bnfold optimize") -> str:
    from .text import gh_data, gh_property

    return f"::{level} file={gh_property(path)},title={gh_property(title)}::{gh_data(message)}"


#: Folds named in one annotation (GitHub shows the first few kilobytes of a message).
_LISTED = 10


def optimize_github(report) -> str:
    """One optimize report as one workflow command: a notice when it went well (what folded, where
    it was written), an error when validation failed or could not prove the fold (nothing written),
    a warning when an unproven fold was written (--accept-unproven)."""
    from .validation import failure_reason

    doc = _doc(report)
    folds = doc["folds"]
    pairs = ", ".join(f"{f['op']} '{f['node']}' into {f['into_op']} '{f['into']}'" for f in folds[:_LISTED])
    more = f" and {len(folds) - _LISTED} more" if len(folds) > _LISTED else ""
    what = f"folded {len(folds)} ({pairs}{more})" if folds else "nothing to fold"
    v = doc.get("validation")
    if not doc["ok"]:
        verdict = "validation could not prove the fold" if doc["verdict"] == "unproven" else "validation failed"
        return _command("error", doc["input"], f"{verdict} ({failure_reason((v or {}).get('reason'))}); "
                                               f"nothing written; {what}") + "\n"
    checked = "not validated" if v is None else f"validation {v['verdict']}"
    level = "warning" if doc.get("unproven_accepted") else "notice"
    tail = f"; written → {doc['output']}" if doc["written"] else ""
    return _command(level, doc["input"], f"{what}; {checked}{tail}") + "\n"


def batch_github(outcomes: Sequence, interrupted=None) -> str:
    """One workflow command per file of a batch (as ``optimize_github``; an unusable file is an error)."""
    lines = []
    for o in outcomes:
        if o.report is not None:
            lines.append(optimize_github(o.report).rstrip("\n"))
        elif o.error:
            lines.append(_command("error", o.input, o.error))
        else:
            d = o.to_dict()
            detail = f" → {o.output}" if o.written and o.output else ""
            lines.append(_command("warning", o.input, f"{d['status']}{detail} ({interrupted})"))
    return "".join(line + "\n" for line in lines)
