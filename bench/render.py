"""docs/BENCHMARKS.md from docs/benchmarks.json (``python bench/compare.py --render-only``).

Only the JSON is read: what the Markdown says was measured, and the targets are judged here,
from the same numbers, so the text cannot drift from the data.
"""

from __future__ import annotations

import math
import statistics

GROUPS = (("torchvision", "Real architectures (torchvision, random weights, BN kept)"),
          ("light", "onnx light zoo (IR 3, BN parameters from ConstantOfShape, random Conv/Gemm weights)"),
          ("chain", "Synthetic chains of N Conv+BN pairs"))
REAL = ("torchvision", "light")
#: Slack allowed by the "linear" target: the cost per extra pair from 5,000 to 20,000 may exceed the
#: cost per extra pair from 1,000 to 5,000 by this factor.
LINEAR_SLACK = 1.25
#: A run "shared the machine" when other processes kept this many cores busy on average during it.
SHARED_CORES = 0.25


def _tools(data: dict) -> list[str]:
    recipes = data.get("settings", {}).get("recipes", {})
    return list(recipes) or sorted({t for r in data["results"].values() for t in r})


def _peers(data: dict) -> list[str]:
    return [t for t in _tools(data) if t not in ("bnfold", "loadsave")]


def _models(data: dict, group: str) -> list[str]:
    names = [n for n, m in data["models"].items() if m.get("group") == group]
    if group == "chain":
        names.sort(key=lambda n: data["models"][n].get("pairs") or 0)
    return names


def _rec(data: dict, model: str, tool: str) -> dict | None:
    return data["results"].get(model, {}).get(tool)


def _ok(rec: dict | None) -> bool:
    return bool(rec) and rec.get("status") == "ok"


def _valid(rec: dict | None) -> bool:
    """The tool finished and its output ran (an output onnxruntime cannot run is no one's best)."""
    return _ok(rec) and (rec.get("errors") or {}).get("max_rel") is not None


def f_time(s: float | None) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "–"
    return f"{s:.2f}" if s < 10 else f"{s:.1f}" if s < 100 else f"{s:.0f}"


def f_mb(b: float | None) -> str:
    return "–" if b is None else f"{b / 2**20:.0f}"


def f_err(x: float | None) -> str:
    if x is None:
        return "–"
    if x == 0:
        return "0"
    if math.isinf(x) or math.isnan(x):
        return str(x)
    return f"{x:.1e}"


def f_ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


class Notes:
    """Footnotes for cells that hold a failure instead of a number."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def ref(self, text: str) -> str:
        text = " ".join(text.split())
        text = text if len(text) <= 240 else text[:237] + "..."
        if text not in self.items:
            self.items.append(text)
        return f"[{self.items.index(text) + 1}]"


def cell(rec: dict | None, value, notes: Notes, model: str, tool: str) -> str:
    if rec is None:
        return "not run"
    status = rec.get("status")
    if status == "ok":
        return value(rec)
    msg = rec.get("message") or status
    if status == "timeout":
        return "timeout"
    if status == "not installed":
        return f"not installed {notes.ref(f'{tool}: {msg}')}"
    if status == "skipped":
        return f"skipped {notes.ref(f'{tool}: {msg}')}"
    return f"failed {notes.ref(f'{tool} on {model}: {msg}')}"


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _err(rec: dict) -> float | None:
    errs = rec.get("errors") or {}
    return errs.get("max_rel")


def _err_cell(rec: dict, notes: Notes, model: str, tool: str) -> str:
    errs = rec.get("errors") or {}
    if "error" in errs:
        msg = errs["error"]
        return f"did not run {notes.ref(f'{tool} output of {model}: {msg}')}"
    text = f"{f_err(errs.get('max_rel'))} ({f_err(errs.get('max_abs'))})"
    if errs.get("max_ref") is not None and errs["max_ref"] <= 1e-4:
        text += " †"
    if errs.get("passed") is False:
        text += " ✗"
    return text


# -- sections -------------------------------------------------------------------------------------


def method(data: dict) -> str:
    m = data.get("machine", {})
    s = data.get("settings", {})
    v = m.get("versions", {})
    src = m.get("bnfold_source", {})
    runs = data.get("runs", [])
    others = [r.get("others_cores") for res in data["results"].values() for r in res.values()
              if r.get("others_cores") is not None and not math.isnan(r.get("others_cores"))]
    busy = [o for o in others if o > SHARED_CORES]
    commit = src.get("commit", "?")[:10] + (" (with uncommitted changes)" if src.get("dirty") else "")
    out = [
        "## Method",
        "",
        f"- **Machine**: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
        f"{(m.get('memory_bytes') or 0) / 2**30:.0f} GB RAM, no GPU; {m.get('os', '?')}; Python {m.get('python', '?')}.",
        "- **Versions**: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) +
        (", not installed: " + ", ".join(k for k, val in v.items() if not val) if any(not x for x in v.values()) else "")
        + f". bnfold from commit {commit}.",
        f"- **Runs**: {len(runs)} invocation(s) of `bench/compare.py`, from {runs[0]['started'] if runs else '?'} "
        f"to {runs[-1].get('finished', runs[-1]['started']) if runs else '?'} (results are cached per model and tool; "
        "each cell carries its own timestamp in the JSON).",
        "- **Shared machine**: " + (
            f"yes — during {len(busy)} of {len(others)} measurements other processes kept more than "
            f"{SHARED_CORES} of the {m.get('cores', '?')} cores busy on average (max {max(busy):.2f}); their times are "
            "inflated by that. Per measurement the JSON has `others_cores` (machine CPU time from /proc/stat minus "
            "the tool's own, divided by its wall time)." if busy else
            f"no — other processes used at most {max(others, default=0):.2f} cores during any measurement."),
        "- **Tool time**: wall time of the whole tool process (interpreter start, imports, load, rewrite, save; "
        "what a user waits for), each tool run alone (never two at once), "
        f"median of {s.get('repeats', 3)} runs; a first run longer than {s.get('long_run_s', 20):g} s is not repeated. "
        "Every run's time is in the JSON (`times`).",
        "- **Peak memory**: the child's `ru_maxrss` as returned by `os.wait4` (peak resident set, including its own "
        "children), the largest over the repeats. The tools are forked from a small launcher process "
        f"({f_mb(m.get('launcher_peak_bytes'))} MB; Linux carries the parent's resident size into a child's "
        "`ru_maxrss`, so no figure can be below that), not from the driver, which holds models.",
        "- **Errors**: `bnfold.validation.validate(original, output)`: both models in onnxruntime at "
        "`ORT_DISABLE_ALL` (so the runtime cannot fuse Conv+BN itself) in a child process, seeded random inputs "
        "(seed 0); max abs and max relative error (over elements with |original| > atol = 1e-4 for float32), the "
        "max over all outputs. ✗ marks an output beyond bnfold's float32 tolerance (1e-4 abs + 1e-3 rel).",
        "- **Exact reference, any model** (not part of this run): `python bench/reference.py ORIGINAL OUTPUT...` "
        "runs the original graph widened to float64 (onnx.reference, inference-mode BN) on the same seeded inputs "
        "and prints each model's max absolute distance from it, the float32 original's own included.",
        f"- **Limits**: {s.get('timeout_s', 300):g} s per tool run (then `timeout`); on the chains a tool that timed "
        "out or failed at one N is not run on bigger N (`skipped`). Failures are reported with the last error line "
        "the tool printed.",
        "- **BN left / nodes**: counted in the output file over the main graph, subgraphs and functions.",
        "",
        "### Tools",
        "",
        table(["tool", "what runs (load → rewrite → save, one process)"],
              [[f"`{name}`", recipe] for name, recipe in s.get("recipes", {}).items()], "ll"),
        "",
        "Why these recipes: onnxoptimizer 0.4's `fuse_bn_into_conv` no longer computes folded weights; it inserts "
        "the arithmetic (Sqrt, Div, Mul, Sub, Add, Unsqueeze, Cast per BN) and relies on a constant folder, and it "
        "matches only BN parameters that are initializers, so PyTorch's PRESERVE exports (parameters through "
        "Identity nodes) need `eliminate_identity` first; the onnxsim pass after it runs with "
        "`perform_optimization=False`, constant folding only (running onnxsim first and onnxoptimizer after leaves "
        "the inserted arithmetic in the model). onnxsim's own default pipeline folds BN too and is measured on its "
        "own (`onnxsim`). onnxscript is measured twice: its BN fusion rules alone (`onnxscript-rules`: what "
        "scales on the chains; they need constant BN parameters, so they fold nothing behind Identity nodes) and "
        "its optimizer (`onnxscript-optimizer`: constant folding first, then the default rules).",
        "",
        "### Corpus",
        "",
        "- torchvision models with random weights (seed 0), exported by `bench/export_corpus.py` with "
        "`torch.onnx.export(..., dynamo=False, training=torch.onnx.TrainingMode.PRESERVE)`, input 1×3×224×224, "
        "opset 20, BN kept. BN statistics look trained: γ ~ U(0.5, 1.5), β ~ N(0, 0.1), running mean and variance "
        "measured on two random batches (with torchvision's initial statistics every BN is nearly an identity and "
        "several of these networks output values below 1e-9, which makes an error comparison meaningless). "
        "`resnet50_default_stats` keeps the initial statistics: the exporter then deduplicates the identical "
        "parameters and routes them through Identity nodes, as in a model exported before training.",
        "- The onnx package's light zoo models that contain BN (`bench/light_zoo.py`): Conv/Gemm weights replaced "
        "by seeded random initializers so outputs vary; BN parameters stay ConstantOfShape.",
        "- `bench/make_chains.py`: N pairs of 1×1 Conv (8 channels, no bias) → BN, input 1×8×4×4, opset 17, "
        f"seeded, N = {', '.join(f'{n:,}' for n in s.get('chains', []))}; `chain_1` (one pair) measures each "
        "tool's fixed cost.",
    ]
    return "\n".join(out)


def per_model(data: dict, notes: Notes) -> str:
    tools = _tools(data)
    out = ["## Results per model", "",
           "Tool columns: bnfold, the peers, and `loadsave` (onnx.load + onnx.save only, the floor). "
           "Bold: the best of bnfold and the peers on that row (among outputs that run)."]
    for group, title in GROUPS:
        names = _models(data, group)
        if not names:
            continue
        out += ["", f"### {title}", ""]
        # BN left / nodes
        rows = []
        for name in names:
            info = data["models"][name]
            if info.get("missing"):
                rows.append([name, "missing"] + ["–"] * len(tools))
                continue
            best = min((r["bn_left"] for t in ["bnfold", *_peers(data)] if _valid(r := _rec(data, name, t))), default=None)
            row = [name, f"{info['bn']} / {info['nodes']}"]
            for t in tools:
                rec = _rec(data, name, t)
                row.append(cell(rec, lambda r, t=t, best=best: (f"**{r['bn_left']}**" if r["bn_left"] == best and t != "loadsave"
                                                     else str(r["bn_left"])) + f" / {r['nodes']}", notes, name, t))
            rows.append(row)
        out += ["**BatchNormalization left / nodes** (original first)", "",
                table(["model", "original", *tools], rows), ""]
        # errors
        rows = []
        for name in names:
            if data["models"][name].get("missing"):
                continue
            row = [name]
            for t in tools:
                rec = _rec(data, name, t)
                row.append(cell(rec, lambda r, t=t, name=name: _err_cell(r, notes, name, t), notes, name, t))
            rows.append(row)
        out += ["**Max relative error (max absolute error) vs the original** (onnxruntime, ORT_DISABLE_ALL; "
                "† the original's outputs are within 1e-4 of zero on the random input: the comparison proves little)",
                "", table(["model", *tools], rows), ""]
        if group == "chain":
            out += [float64_table(data, names, tools), ""]
        # time
        rows = []
        for name in names:
            if data["models"][name].get("missing"):
                continue
            best = min((r["time"] for t in ["bnfold", *_peers(data)] if _valid(r := _rec(data, name, t))), default=None)
            row = [name]
            for t in tools:
                rec = _rec(data, name, t)
                row.append(cell(rec, lambda r, t=t, best=best: f"**{f_time(r['time'])}**" if r["time"] == best and t != "loadsave"
                                else f_time(r["time"]), notes, name, t))
            rows.append(row)
        out += ["**Tool time, s** (whole process, median)", "", table(["model", *tools], rows), ""]
        # memory
        rows = []
        for name in names:
            info = data["models"][name]
            if info.get("missing"):
                continue
            best = min((r["peak_bytes"] for t in ["bnfold", *_peers(data)] if _valid(r := _rec(data, name, t))), default=None)
            row = [name, f_mb(info["weight_bytes"])]
            for t in tools:
                rec = _rec(data, name, t)
                row.append(cell(rec, lambda r, t=t, best=best: f"**{f_mb(r['peak_bytes'])}**" if r["peak_bytes"] == best and t != "loadsave"
                                else f_mb(r["peak_bytes"]), notes, name, t))
            rows.append(row)
        out += ["**Peak memory, MB** (resident set of the tool process; `weights`: bytes of the model's constant tensors)",
                "", table(["model", "weights", *tools], rows)]
    return "\n".join(out)


def _f64(rec: dict | None) -> dict:
    return ((rec or {}).get("errors") or {}).get("vs_float64") or {}


def float64_table(data: dict, names: list[str], tools: list[str]) -> str:
    rows = []
    for name in names:
        recs = {t: _rec(data, name, t) for t in tools}
        original = next((_f64(r).get("original_max_abs") for r in recs.values() if _f64(r).get("original_max_abs") is not None), None)
        row = [name, f_err(original)]
        for t in tools:
            r = recs[t]
            row.append(f_err(_f64(r)["max_abs"]) if _ok(r) and "max_abs" in _f64(r) else "–")
        rows.append(row)
    return "\n".join([
        "**Max absolute distance from the exact result** (the chain evaluated in float64 with numpy from its own "
        "parameters; every model run in float32 by onnxruntime, one seeded input). The float32 original is itself "
        "this far from exact: an error \"vs the original\" of the same size can mean a fold that is closer to "
        "the exact answer, not further.", "",
        table(["model", "float32 original", *tools], rows)])


def fixed_cost(data: dict, notes: Notes) -> str:
    tools = _tools(data)
    name = "chain_1"
    if name not in data["results"]:
        return ""
    row_t = ["time, s"] + [cell(_rec(data, name, t), lambda r: f_time(r["time"]), notes, name, t) for t in tools]
    row_m = ["peak, MB"] + [cell(_rec(data, name, t), lambda r: f_mb(r["peak_bytes"]), notes, name, t) for t in tools]
    return "\n".join(["## Fixed cost of each tool", "",
                      "Each tool on a one-pair chain (`chain_1`, 1.5 KB): interpreter start-up, imports, runtime "
                      "initialisation. Everything a tool spends beyond this depends on the model.", "",
                      table(["", *tools], [row_t, row_m])])


def loadsave_ratio(data: dict) -> str:
    rows = []
    for group in REAL:
        for name in _models(data, group):
            b, ls = _rec(data, name, "bnfold"), _rec(data, name, "loadsave")
            if not (_ok(b) and _ok(ls)):
                continue
            fastest = min(((r["time"], t) for t in _peers(data) if _valid(r := _rec(data, name, t))), default=None)
            rows.append([name, f_time(ls["time"]), f_time(b["time"]), f_ratio(b["time"] / ls["time"]),
                         f"{fastest[1]} {f_time(fastest[0])}" if fastest else "–",
                         f_ratio(fastest[0] / ls["time"]) if fastest else "–"])
    if not rows:
        return ""
    return "\n".join(["## Against a plain load + save", "",
                      "Whole-process times, s. `loadsave` runs `onnx.save(onnx.load(IN), OUT)` and nothing else.", "",
                      table(["model", "loadsave", "bnfold", "bnfold / loadsave", "fastest peer", "peer / loadsave"], rows)])


def phases(data: dict) -> str:
    rows = []
    for group in (*REAL, "chain", "baseline"):
        for name in _models(data, group):
            rec = _rec(data, name, "bnfold")
            if not _ok(rec) or not rec.get("phases"):
                continue
            ph = rec["phases"]
            inside = sum(v for v in ph.values() if isinstance(v, (int, float)))
            rows.append([name, f_time(rec["time"]), f_time(max(0.0, rec["time"] - inside)),
                         *(f_time(ph.get(k)) for k in ("load", "fold", "save"))])
    if not rows:
        return ""
    return "\n".join(["## Where bnfold's time goes", "",
                      "bnfold's own phase timings (`bnfold optimize --json`, `seconds`, from one extra untimed run) "
                      "against the whole-process median; `start-up & rest` = whole − (load + fold + save): "
                      "interpreter, imports, command line, report.", "",
                      table(["model", "whole process", "start-up & rest", "load", "fold", "save"], rows)])


def chain_scaling(data: dict, notes: Notes) -> str:
    tools = _tools(data)
    names = _models(data, "chain")
    if not names:
        return ""
    rows = []
    for name in names:
        n = data["models"][name]["pairs"]
        row = [f"{n:,}"]
        for t in tools:
            row.append(cell(_rec(data, name, t), lambda r, n=n: f"{f_time(r['time'])} ({r['time'] / n * 1e3:.2f})",
                            notes, name, t))
        rows.append(row)
    slope_rows = []
    for a, b in zip(names, names[1:]):
        na, nb = data["models"][a]["pairs"], data["models"][b]["pairs"]
        row = [f"{na:,} → {nb:,}"]
        for t in tools:
            ra, rb = _rec(data, a, t), _rec(data, b, t)
            row.append(f"{(rb['time'] - ra['time']) / (nb - na) * 1e3:.2f}" if _ok(ra) and _ok(rb) else "–")
        slope_rows.append(row)
    return "\n".join(["## Scaling: chains of N Conv+BN pairs", "",
                      "Whole-process time in s, and in parentheses ms per pair (time / N).", "",
                      table(["N", *tools], rows), "",
                      "Marginal cost, ms per extra pair between consecutive N (start-up cancels out; constant "
                      "means linear):", "", table(["N", *tools], slope_rows)])


def _bound(value) -> str:
    """An interval bound, or "∞" where the JSON says it is unbounded (null: too few samples)."""
    return "∞" if value is None else f"{value:.2f}"


def latency(data: dict) -> str:
    lat = data.get("latency", {})
    if not lat:
        return ""
    out = ["## Latency: original vs bnfold's output (`bnfold bench ORIGINAL FOLDED --json`)", ""]
    rows, missing = [], []
    for name, res in lat.items():
        if "unavailable" in res:
            missing.append(f"- {name}: {res['unavailable']}")
            continue
        for st in res.get("settings", []):
            lm = st.get("latency_ms", {})
            sm = st.get("session_ms", {})
            sp = st.get("speedup", {})
            ci = f"[{_bound(sp.get('ci_low'))}, {_bound(sp.get('ci_high'))}]"
            rows.append([name, f"{st.get('name')} ({st.get('optimization_level', '?')})",
                         f"{lm.get('original', {}).get('median', float('nan')):.2f}",
                         f"{lm.get('folded', {}).get('median', float('nan')):.2f}",
                         f"{lm.get('original', {}).get('p90', float('nan')):.2f} / {lm.get('folded', {}).get('p90', float('nan')):.2f}",
                         f"{sp.get('ratio', float('nan')):.3f} {ci}", str(sp.get("verdict", "")),
                         f"{sm.get('original', {}).get('median', float('nan')):.0f} / {sm.get('folded', {}).get('median', float('nan')):.0f}",
                         str(st.get("pairs", ""))])
    if rows:
        first = next(r for r in lat.values() if "unavailable" not in r)
        proto = first.get("protocol", {})
        speedup = next((st.get("speedup", {}) for st in first.get("settings", [])), {})
        interval = (f"an exact {speedup['method']} interval ({speedup.get('family_confidence', 0.95):.0%} for the "
                    "four verdicts together)" if "method" in speedup else "a 95 % paired bootstrap interval")
        sessions = proto.get("max_rounds", proto.get("session_repeats", "?"))
        out += [f"Per setting: median/p90 latency in ms of one inference (batch 1, 1×3×224×224), "
                f"{proto.get('order', 'interleaved pairs')}, up to {proto.get('max_pairs', '?')} pairs or "
                f"{proto.get('time_budget_s', '?')} s, after {proto.get('warmup', '?')} warm-up runs; speedup = "
                f"median(original) / median(folded) with {interval}; session = session "
                f"creation, ms (median over up to {sessions} rounds). onnxruntime "
                f"{first.get('runtime', {}).get('onnxruntime', '?')}, "
                f"{first.get('runtime', {}).get('provider', '?')}, threads: "
                f"{first.get('runtime', {}).get('threads') or 'onnxruntime default'}.", "",
                table(["model", "setting", "original ms", "folded ms", "p90 orig / folded", "speedup [95 % CI]",
                       "verdict", "session ms orig / folded", "pairs"], rows, "llrrrrlrr")]
    if missing:
        out += ["", *missing]
    return "\n".join(out)


# -- targets ----------------------------------------------------------------------------------------


def targets(data: dict) -> str:
    peers = _peers(data)
    corpus = [n for g in (*REAL, "chain") for n in _models(data, g) if not data["models"][n].get("missing")]
    real = [n for g in REAL for n in _models(data, g) if not data["models"][n].get("missing")]
    out = ["## Targets", "", "Goals from the issue, judged on the numbers above (goals, not tests). \"Peer\" means a "
           "peer that finished and whose output onnxruntime can run.", ""]

    def verdict(misses: list[str], judged: int, what: str) -> list[str]:
        if not judged:
            return [f"- **{what}**: not judged (no data)."]
        head = f"- **{what}**: " + ("**met** on all " + f"{judged} models." if not misses else
                                    f"**not met** on {len(misses)} of {judged} models:")
        return [head, *(f"  - {m}" for m in misses)]

    # 1. BN left
    misses, judged = [], 0
    for n in corpus:
        b = _rec(data, n, "bnfold")
        ok_peers = [(r["bn_left"], t) for t in peers if _valid(r := _rec(data, n, t))]
        if not _ok(b) or not ok_peers:
            if not _ok(b):
                misses.append(f"{n}: bnfold {b.get('status') if b else 'not run'}")
                judged += 1
            continue
        judged += 1
        best = min(ok_peers)
        if b["bn_left"] > best[0]:
            misses.append(f"{n}: bnfold leaves {b['bn_left']} BN, {best[1]} {best[0]}")
    out += verdict(misses, judged, "BN left ≤ best peer")

    # 2. error
    misses, judged, notes = [], 0, []
    for n in corpus:
        b = _rec(data, n, "bnfold")
        if not _ok(b) or _err(b) is None:
            continue
        cands = [(_err(r), t) for t in peers if _valid(r := _rec(data, n, t)) and _err(r) is not None
                 and r["bn_left"] <= b["bn_left"]]
        if not cands:
            notes.append(n)
            continue
        judged += 1
        best = min(cands)
        if _err(b) > best[0]:
            peer_abs = _rec(data, n, best[1])["errors"]["max_abs"]
            misses.append(f"{n}: bnfold {f_err(_err(b))} (abs {f_err(b['errors']['max_abs'])}), best peer {best[1]} "
                          f"{f_err(best[0])} (abs {f_err(peer_abs)})"
                          + (f", {_err(b) / best[0]:.2f}×" if best[0] else ""))
    out += verdict(misses, judged, "max relative error ≤ best peer's (among peers that left no more BN than bnfold)")
    if notes:
        out.append(f"  - not judged (no peer folded as much as bnfold): {', '.join(notes)}")
    exact = []
    for n in _models(data, "chain"):
        b = _rec(data, n, "bnfold")
        cands = [(_f64(r)["max_abs"], t) for t in peers if _valid(r := _rec(data, n, t)) and "max_abs" in _f64(r)]
        if _ok(b) and "max_abs" in _f64(b) and cands:
            best = min(cands)
            exact.append(f"{n}: bnfold {f_err(_f64(b)['max_abs'])}, best peer {best[1]} {f_err(best[0])}, "
                         f"float32 original {f_err(_f64(b).get('original_max_abs'))}")
    if exact:
        closer = sum(1 for n in _models(data, "chain") if _ok(b := _rec(data, n, "bnfold")) and "max_abs" in _f64(b)
                     and all(_f64(b)["max_abs"] <= _f64(r)["max_abs"] for t in peers
                             if _valid(r := _rec(data, n, t)) and "max_abs" in _f64(r)))
        out.append(f"  - against the exact float64 result instead (chains, max abs), bnfold is the closest on {closer} of "
                   f"{len(exact)}: " + "; ".join(exact) + ". The peers fold in float32 and reproduce the float32 "
                   "original's own rounding; bnfold folds in float64 and rounds once, so \"error vs the float32 "
                   "original\" partly measures how closely a fold copies the original's rounding.")

    # 3. time vs fastest peer
    misses, judged = [], 0
    for n in corpus:
        b = _rec(data, n, "bnfold")
        ok_peers = [(r["time"], t) for t in peers if _valid(r := _rec(data, n, t))]
        if not _ok(b) or not ok_peers:
            continue
        judged += 1
        best = min(ok_peers)
        if b["time"] > best[0]:
            misses.append(f"{n}: bnfold {f_time(b['time'])} s, {best[1]} {f_time(best[0])} s ({b['time'] / best[0]:.2f}×)")
    out += verdict(misses, judged, "tool time ≤ fastest peer (whole processes)")
    b, o = _rec(data, "chain_5000", "bnfold"), _rec(data, "chain_5000", "onnxscript-rules")
    if _ok(b) and _ok(o):
        out.append(f"  - chain of 5,000 pairs: bnfold {f_time(b['time'])} s vs onnxscript-rules {f_time(o['time'])} s: "
                   + ("**met**" if b["time"] <= o["time"] else f"**not met** ({b['time'] / o['time']:.2f}×)"))

    # 4. vs load+save
    misses, judged = [], 0
    for n in real:
        b, ls = _rec(data, n, "bnfold"), _rec(data, n, "loadsave")
        if not (_ok(b) and _ok(ls)):
            continue
        judged += 1
        if b["time"] > 1.5 * ls["time"]:
            misses.append(f"{n}: {b['time'] / ls['time']:.2f}× ({f_time(b['time'])} s vs {f_time(ls['time'])} s)")
    out += verdict(misses, judged, "tool time ≤ 1.5× a load+save process (real architectures)")
    ratios = [_rec(data, n, "bnfold")["time"] / _rec(data, n, "loadsave")["time"] for n in real
              if _ok(_rec(data, n, "bnfold")) and _ok(_rec(data, n, "loadsave"))]
    if ratios:
        out.append(f"  - ratio median {statistics.median(ratios):.2f}×, range {min(ratios):.2f}–{max(ratios):.2f}×")

    # 5. linear
    pts = {data["models"][n]["pairs"]: _rec(data, n, "bnfold") for n in _models(data, "chain")}
    if all(k in pts and _ok(pts[k]) for k in (1000, 5000, 20000)):
        s1 = (pts[5000]["time"] - pts[1000]["time"]) / 4000
        s2 = (pts[20000]["time"] - pts[5000]["time"]) / 15000
        ratio = s2 / s1 if s1 > 0 else float("inf")
        out.append("- **linear from 1,000 to 20,000 pairs**: " + ("**met**" if ratio <= LINEAR_SLACK else "**not met**")
                   + f": {s1 * 1e3:.2f} ms per extra pair from 1,000 to 5,000, {s2 * 1e3:.2f} ms from 5,000 to 20,000 "
                   f"(ratio {ratio:.2f}; linear means ≤ {LINEAR_SLACK}); per pair overall "
                   + ", ".join(f"{pts[k]['time'] / k * 1e3:.2f} ms at {k:,}" for k in (1000, 5000, 20000)) + ".")
    else:
        out.append("- **linear from 1,000 to 20,000 pairs**: not judged (bnfold lacks a result at 1,000, 5,000 or 20,000).")

    # 6. memory
    misses, judged = [], 0
    base = _rec(data, "chain_1", "bnfold")
    base_peak = base["peak_bytes"] if _ok(base) else 0
    for n in real:
        b = _rec(data, n, "bnfold")
        w = data["models"][n].get("weight_bytes") or 0
        if not _ok(b) or not w:
            continue
        judged += 1
        if b["peak_bytes"] > 2 * w:
            misses.append(f"{n}: {f_mb(b['peak_bytes'])} MB = {b['peak_bytes'] / w:.1f}× its {f_mb(w)} MB of weights"
                          + (f" ({max(0, b['peak_bytes'] - base_peak) / w:.1f}× without bnfold's {f_mb(base_peak)} MB "
                             "fixed cost)" if base_peak else ""))
    out += verdict(misses, judged, "peak memory ≤ 2× the model's weight bytes (real architectures)")
    chains = [(data["models"][n], _rec(data, n, "bnfold")) for n in _models(data, "chain")]
    chains = [(m, r) for m, r in chains if _ok(r)]
    if chains:
        out.append("  - chains (their weights are tiny; the graph's size dominates): " + ", ".join(
            f"{m['pairs']:,} pairs {f_mb(r['peak_bytes'])} MB" for m, r in chains) + ".")
    if base_peak:
        out.append(f"  - bnfold's fixed cost (one-pair chain) is {f_mb(base_peak)} MB: no model with less than "
                   f"{f_mb(base_peak / 2)} MB of weights can meet this target as worded.")
    return "\n".join(out)


def render(data: dict) -> str:
    notes = Notes()
    parts = [
        "# Benchmarks: bnfold and the tools users would otherwise pick",
        "",
        "Generated by `bench/compare.py` from [benchmarks.json](benchmarks.json); do not edit by hand. "
        "Reproduce: `pip install -e '.[bench]'`, then `python bench/compare.py --corpus DIR` "
        "(`--only TOOL`, `--models NAME...`, `--force` to redo cached cells, `--render-only` to re-render). "
        "Jump to [Targets](#targets).",
        "",
        method(data),
        "",
        per_model(data, notes),
        "",
        fixed_cost(data, notes),
        "",
        loadsave_ratio(data),
        "",
        chain_scaling(data, notes),
        "",
        phases(data),
        "",
        latency(data),
        "",
        targets(data),
    ]
    if notes.items:
        parts += ["", "## Notes", "", *(f"{i}. {text}" for i, text in enumerate(notes.items, 1))]
    return "\n".join(p for p in parts) .replace("\n\n\n", "\n\n").rstrip() + "\n"


#: The line after which docs/BENCHMARKS.md is written by hand (QDQ, the peers' patterns, start-up):
#: ``with_hand_written`` keeps it and what follows it when the sections above are rendered again.
HAND_WRITTEN = "<!-- Written by hand from here on: bench/compare.py keeps the rest of this file when it renders the sections above. -->"


def with_hand_written(rendered: str, old: str | None) -> str:
    """``rendered`` followed by the hand-written part of the file it replaces (``old``), if any."""
    if not old or HAND_WRITTEN not in old:
        return rendered
    return rendered.rstrip("\n") + "\n\n" + old[old.index(HAND_WRITTEN):]
