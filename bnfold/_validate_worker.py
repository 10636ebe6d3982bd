"""Child process of ``bnfold.validation.validate``: runs both models, writes what it measured as JSON.

Run as ``python -m bnfold._validate_worker REQUEST.json`` (``bnfold.child``). It says what it is
doing before each step (``child.Progress``), so that if the runtime kills the process the parent
can say when.

Steps: load both models as the runtime reads them (``io.load_runnable``) and prepare them alike
(``runtime.prepare_for_runtime``); choose the input sets (the user's ``.npz`` files, or random
sets on shapes chosen by ``bnfold.shapes``); run both models on every set, one session each;
measure every output (``bnfold.compare``), an output on a quantization grid the graph states
(``bnfold.quantgrid``) also in quanta; where the fast pass does not decide a float output, or
when asked, run the original widened to float64 (``bnfold.widen``) for the exact answer; where an output
still differs, run the original once more to see whether it reproduces itself. The parent
(``validation._judge``) turns the figures into verdicts.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import onnx

from . import child, compare, feeds, shapes, tolerances
from .errors import BnfoldError
from .inputs import check_input_bytes, input_bytes, memory_limit, real_inputs, resolve_shapes
from .io import load_runnable
from .quantgrid import grid_quantum, shared_grids, unrounded
from .runtime import Backend, CannotRun, prepare_for_runtime
from .text import one_line
from .widen import widen_feeds

#: The exact reference (``bnfold._exact_worker``) may use at most this fraction of the memory bnfold may use
#: (address space).
EXACT_MEMORY_FRACTION = 0.5


class FoldedFails(Exception):
    """The original runs and the folded model does not: a failed validation, not an unproven one."""


def _outputs(model: onnx.ModelProto, values: list) -> dict[str, np.ndarray]:
    return dict(zip((o.name for o in model.graph.output), values))


def _trial(errors_of: dict[str, compare.Errors]) -> tuple[int, int]:
    """How informative a trial run was: (outputs that vary, outputs not ~0)."""
    return (sum(e.varies for e in errors_of.values()), sum(e.informative for e in errors_of.values()))


def unrounded_steps(original, folded, backend, sets, quanta: dict, wanted: dict[str, set[int]]) -> dict:
    """``{output: {set index: max |difference| in quanta}}`` of the two models without activation
    rounding (``unrounded``), for the outputs and sets in ``wanted``; CannotRun when they do not run."""
    relaxed = unrounded(original), unrounded(folded)
    if relaxed[0] is None or relaxed[1] is None:
        raise CannotRun("the models have no QuantizeLinear → DequantizeLinear pair to take the rounding out of")
    models = [relaxed[0], relaxed[1]]
    sessions = [backend.session(m, f"{which} without activation rounding")
                for m, which in zip(models, ("original", "folded"))]
    steps: dict[str, dict[int, float]] = {n: {} for n in wanted}
    for k in sorted(set().union(*wanted.values())):
        label, set_feeds = sets[k]
        a, b = (_outputs(m, backend.run(sess, set_feeds, f"{which} without activation rounding ({label})"))
                for m, sess, which in zip(models, sessions, ("original", "folded")))
        for n in wanted:
            if k in wanted[n]:
                ref = a[n].astype(np.float64)
                finite = np.isfinite(ref)
                step = np.broadcast_to(np.abs(np.asarray(quanta[n], dtype=np.float64)), ref.shape)[finite]
                diff = np.abs(b[n].astype(np.float64)[finite] - ref[finite])
                with np.errstate(divide="ignore", invalid="ignore"):
                    steps[n][k] = float(np.nan_to_num(diff / step, nan=np.inf).max(initial=0.0))
    return steps


def choose_shapes(original, inputs, given, seed, backend, deadline) -> tuple[dict, str, dict | None]:
    """The shapes of the random sets, how they were chosen, and the original's outputs on set 0
    with them (None if not run yet). See ``bnfold.shapes``."""
    plan = shapes.plan(inputs, given)
    missing = [vi.name for vi in inputs if vi.name not in plan.dims]
    if missing:
        raise CannotRun(f"input '{missing[0]}' has no declared shape; pass --input-shape {missing[0]}=DIMxDIM... "
                        "or --inputs")
    if not plan.searched:
        return plan.shapes(1), plan.describe(None, ""), None
    limit, tried, best = memory_limit(), [], None
    for size in shapes.CANDIDATES:
        candidate = plan.shapes(size)
        if input_bytes(original, candidate) > limit:
            tried.append(f"{size}: inputs too large")
            continue
        set0 = feeds.random_set(inputs, candidate, seed, 0)
        try:
            ref = _outputs(original, backend.run(backend.first, set0, f"original (sizes {size})"))
        except CannotRun as exc:
            tried.append(f"{size}: {exc}")
            if time.monotonic() > deadline:
                break
            continue
        score = _trial({n: compare.errors(v, v) for n, v in ref.items()})
        if best is None or score > best[0]:
            best = (score, size, ref)
        if score[0] == len(ref) or time.monotonic() > deadline:
            break
    if best is None:
        raise CannotRun(f"the original model ran at none of the sizes tried for its symbolic dimensions "
                        f"({'; '.join(tried)[:400]}); pass --input-shape")
    (varying, informative), size, ref = best
    why = ("the first size tried where every output varies" if varying == len(ref) else
           f"no size tried made every output vary; {varying} of {len(ref)} vary at this one")
    return plan.shapes(size), plan.describe(size, why), ref


def exact_outputs(model_path: str, sets, needed: set[int], workdir: str, seconds: float,
                  progress: child.Progress) -> tuple[dict, str | None]:
    """``{set index: {output: float64 values}}`` of the original widened to float64 for the sets in
    ``needed``, and None; or ``{}`` and why the exact reference could not run. In a process of its
    own (``_exact_worker``: ``EXACT_MEMORY_FRACTION``), abandoned after ``seconds``."""
    order = sorted(needed)
    paths = []
    for k in order:
        path = os.path.join(workdir, f"exact-set{k}.npz")
        feeds.save_npz(path, widen_feeds(sets[k][1]))  # float64 already: .npz has no bfloat16
        paths.append(path)
    out = os.path.join(workdir, "exact.npz")
    progress.stage("computing the exact answer (the original widened to float64)")
    limit = max(seconds, 1.0)
    ended = child.run(child.command("bnfold._exact_worker"), {"model": model_path, "out": out, "sets": paths},
                      timeout=limit, memory_fraction=EXACT_MEMORY_FRACTION)
    if ended.timed_out:
        return {}, f"it did not finish in the {limit:.0f} s left of the validation's time limit"
    if not ended.ok or ended.result is None:  # (ok: there is a result)
        return {}, ended.failure(f"the exact reference failed (exit {ended.returncode})")
    if ended.result.get("error"):
        return {}, ended.result["error"]
    results: dict[int, dict] = {k: {} for k in order}
    with np.load(out, allow_pickle=False) as data:
        for key in data.files:
            tag, name = key.split("/", 1)
            results[order[int(tag.removeprefix("set"))]][name] = data[key]
    return results, None


def _measure(req: dict, progress: child.Progress) -> tuple:
    report: dict = {}
    started = time.monotonic()
    timeout = req.get("timeout") or 1e9
    original = prepare_for_runtime(load_runnable(req["original"]))
    folded = prepare_for_runtime(load_runnable(req["folded"]))
    inputs = real_inputs(original)
    for vi in inputs:
        if not vi.type.HasField("tensor_type"):
            raise CannotRun(f"input '{vi.name}' is not a tensor; bnfold validates tensor inputs only")
    backend = Backend(original, progress.stage)
    report["backend"] = backend.name
    first_ref = None
    if req.get("inputs"):
        limit = memory_limit()
        sets = []
        for path in req["inputs"]:
            set_feeds = feeds.check_set(path, feeds.load_npz(path, limit), inputs)
            sets.append((path, set_feeds))
        report["shapes_chosen"] = f"from the {len(sets)} input file{'s' if len(sets) != 1 else ''} given (--inputs)"
    else:
        given = resolve_shapes(req["label"], original, req["input_shapes"])
        deadline = started + min(shapes.SEARCH_SECONDS, timeout / 2)
        chosen, report["shapes_chosen"], first_ref = choose_shapes(original, inputs, {k: given[k] for k in
                                                                   req["input_shapes"]}, req["seed"], backend, deadline)
        check_input_bytes(req["label"], original, chosen)
        sets = [(feeds.set_label(k), feeds.random_set(inputs, chosen, req["seed"], k)) for k in range(len(feeds.KINDS))]
    report["sets"] = [{"label": label, "inputs": {k: list(v.shape) for k, v in s.items()}} for label, s in sets]
    try:
        folded_session = backend.session(folded, "folded")
    except Exception as exc:
        raise FoldedFails(f"the folded model does not load where the original does: {one_line(exc)}") from None
    refs, gots = [], []
    for k, (label, set_feeds) in enumerate(sets):
        ref = first_ref if k == 0 and first_ref is not None else \
            _outputs(original, backend.run(backend.first, set_feeds, f"original ({label})"))
        try:
            got = _outputs(folded, backend.run(folded_session, set_feeds, f"folded ({label})"))
        except CannotRun as exc:
            raise FoldedFails(f"the folded model does not run where the original does ({label}): {exc}") from None
        if set(ref) != set(got):
            raise FoldedFails(f"the models' outputs differ: original {sorted(ref)}, folded {sorted(got)}")
        empty = [n for n, v in ref.items() if v.size == 0]
        if empty:
            raise CannotRun(f"output '{empty[0]}' has no elements with these input shapes: nothing to compare")
        refs.append(ref)
        gots.append(got)
    names = list(refs[0])
    elementwise = req["atol"] is not None or req["rtol"] is not None
    quanta = {}
    for n, grid in shared_grids(original, folded).items():
        quantum = grid_quantum(grid, refs[0][n].shape) if n in refs[0] else None
        if quantum is not None and compare.is_float(refs[0][n].dtype):
            quanta[n] = quantum
    measured = {n: [compare.errors(refs[k][n], gots[k][n]) for k in range(len(sets))] for n in names}
    kinds = {n: (refs[0][n].dtype.name, list(refs[0][n].shape), gots[0][n].dtype.name, list(gots[0][n].shape))
             for n in names}
    exact_wanted = req.get("reference") == "float64"
    undecided = set()
    if not elementwise:
        for n in names:
            if not compare.is_float(refs[0][n].dtype) or n in quanta:  # quantized outputs are judged in quanta
                continue
            for k, e in enumerate(measured[n]):
                if e.informative and not tolerances.fast_pass(e.max_abs, e.scale, refs[0][n].dtype):
                    undecided.add(k)
    exact: dict[int, dict] = {}
    exact_error = None
    if exact_wanted or undecided:
        need = set(range(len(sets))) if exact_wanted else undecided
        left = timeout - (time.monotonic() - started) - 5.0  # the comparison and the self-check come after
        if left < 1.0:
            exact_error = "no time left for it within the validation's time limit"
        else:
            exact, exact_error = exact_outputs(req["original"], sets, need, os.path.dirname(req["result"]), left,
                                               progress)
    report["reference"] = {"mode": req.get("reference") or "original", "ran": bool(exact), "error": exact_error,
                           "sets": sorted(exact)}
    outputs = []
    for n in names:
        ref_dtype, ref_shape, got_dtype, got_shape = kinds[n]
        per_set = []
        for k, e in enumerate(measured[n]):
            entry = {"set": sets[k][0], **e.to_dict()}
            if n in quanta:
                entry.update(compare.quantum_errors(refs[k][n], gots[k][n], quanta[n]).to_dict())
            if k in exact and n in exact[k]:
                entry["exact_original"] = compare.distance(refs[k][n], exact[k][n])
                entry["exact_folded"] = compare.distance(gots[k][n], exact[k][n])
            if elementwise:
                tol = tolerances.tolerance_for(ref_dtype, req["atol"], req["rtol"])
                entry["within_elementwise"] = compare.within(refs[k][n], gots[k][n], tol.atol, tol.rtol)
            per_set.append(entry)
        outputs.append({"name": n, "dtype": ref_dtype, "shape": ref_shape, "folded_dtype": got_dtype,
                        "folded_shape": got_shape, "sets": per_set})
    wanted = {} if elementwise else {o["name"]: {k for k, e in enumerate(o["sets"]) if "quantum" in e and not (
        tolerances.fast_pass(e["max_abs"], e["scale"], o["dtype"]) or
        tolerances.quantum_pass(e["moved"], e["beyond"], e["elements"]))} for o in outputs}
    wanted = {n: ks for n, ks in wanted.items() if ks}
    report["unrounded"] = {"ran": False, "error": None}
    if wanted:  # rounding boundaries crossed: the arbiter is the comparison without activation rounding
        try:
            steps = unrounded_steps(original, folded, backend, sets, quanta, wanted)
        except CannotRun as exc:
            report["unrounded"]["error"] = str(exc)
        else:
            report["unrounded"]["ran"] = True
            for o in outputs:
                for k, value in steps.get(o["name"], {}).items():
                    o["sets"][k]["unrounded"] = value
    report["outputs"] = outputs
    report["elementwise"] = elementwise
    return report, original, backend, sets, refs


def _self_check(report, original, backend, sets, refs, judge) -> None:
    """For each output the parent would call different: does a second run of the original (a new
    session) reproduce the first? If not, the output is nondeterministic, not evidence."""
    suspects = {o["name"] for o in report["outputs"] if judge(o) == "failed"}
    if not suspects:
        return
    session = backend.session(original, "original (again)")
    moved: dict[str, float] = {}
    for k, (label, set_feeds) in enumerate(sets):
        again = _outputs(original, backend.run(session, set_feeds, f"original again ({label})"))
        for name in suspects:
            a, b = refs[k][name], again[name]
            if a.shape != b.shape or not np.array_equal(a, b, equal_nan=compare.is_float(a.dtype)):
                moved[name] = max(moved.get(name, 0.0), compare.distance(b, a))
    for out in report["outputs"]:
        if out["name"] in moved:
            out["nondeterministic"] = True
            out["self_diff"] = moved[out["name"]]


def main(req: dict, progress: child.Progress) -> dict:
    """The figures for ``validation._judge``: ``failed``, ``error`` or ``refused`` say why there are none."""
    from .validation import output_verdict

    report: dict = {"backend": "", "sets": [], "outputs": []}
    try:
        progress.stage("loading the models")
        measured, original, backend, sets, refs = _measure(req, progress)
        report.update(measured)
        exact_only = report["reference"]["mode"] == "float64"
        _self_check(report, original, backend, sets, refs,
                    lambda o: output_verdict(o, report["elementwise"], exact_only)[0])
    except FoldedFails as exc:
        report["failed"] = str(exc)
    except CannotRun as exc:
        report["error"] = str(exc)
    except BnfoldError as exc:  # unusable file, input shape or input set: the parent raises it, nothing ran
        report["refused"] = str(exc)
        report["refused_kind"] = type(exc).__name__  # the parent raises the same class
    return report


if __name__ == "__main__":
    sys.exit(child.serve(main))
