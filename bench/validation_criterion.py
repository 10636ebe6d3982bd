"""How validation's criterion judges correct folds and known-wrong ones, against the old rule and the peers'.

    python bench/validation_criterion.py --corpus DIR [--seeds N] [--out docs]

For every model of the corpus (the torchvision exports in DIR, the sample models, the light
zoo, chains of 100 / 1,000 / 5,000 Conv+BN pairs, and N random models of tests/random_models.py)
bnfold folds it and ``bnfold.validate`` judges the fold: verdict, what decided it, and per
output the error in eps of its scale (the tolerance that would have been needed). On the same
input sets, the elementwise rules ``|d| <= atol + rtol |x|`` of the old criterion (float32 1e-4 /
1e-3), onnxsim (atol 1e-5, rtol 1e-4), onnxslim (1e-4, 1e-3) and Polygraphy (1e-5, 1e-5) judge
the same outputs. Then known-wrong folds (each a precision loss some tool made or bnfold once
made) go through every criterion: a good criterion passes every correct fold and fails every
wrong one. Writes ``OUT/validation.json`` and ``OUT/VALIDATION.md``; takes a few minutes.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import bnfold  # noqa: E402
from bnfold import compare, feeds, jsonout, tolerances  # noqa: E402
from bnfold.io import load_runnable  # noqa: E402
from bnfold.runtime import Backend, prepare_for_runtime  # noqa: E402

#: (name, atol, rtol) of the elementwise rules compared with bnfold's.
RULES = (("old bnfold", 1e-4, 1e-3), ("onnxsim", 1e-5, 1e-4), ("onnxslim", 1e-4, 1e-3), ("Polygraphy", 1e-5, 1e-5))


def elementwise_verdicts(original_path, folded_path, result) -> dict[str, bool]:
    """Each rule's verdict on the sets validation used (random ones rebuilt from its shapes and seed)."""
    original = prepare_for_runtime(load_runnable(original_path))
    folded = prepare_for_runtime(load_runnable(folded_path))
    inputs = [vi for vi in original.graph.input if vi.name not in {t.name for t in original.graph.initializer}]
    backend = Backend(original)
    second = backend.session(folded, "folded")
    verdicts = {name: True for name, _, _ in RULES}
    for k, s in enumerate(result.sets):
        set_feeds = feeds.random_set(inputs, s["inputs"], result.seed, k)
        ref, got = backend.run(backend.first, set_feeds, "original"), backend.run(second, set_feeds, "folded")
        for name, atol, rtol in RULES:
            verdicts[name] &= all(compare.within(r, g, atol, rtol) for r, g in zip(ref, got))
    return verdicts


def judge(label: str, original_path: Path, folded_path: Path, expected: str, kind: str) -> dict:
    start = time.perf_counter()
    result = bnfold.validate(original_path, folded_path)
    seconds = time.perf_counter() - start
    row = {"model": label, "kind": kind, "expected": expected, "verdict": result.verdict, "reason": result.reason,
           "seconds": seconds, "outputs": [{"name": o.name, "dtype": o.dtype, "needed": o.needed, "stage": o.stage,
                                            "worst_set": o.worst_set, "exact_original": o.exact_original,
                                            "exact_folded": o.exact_folded} for o in result.outputs]}
    try:
        row["rules"] = elementwise_verdicts(original_path, folded_path, result) if result.sets else {}
    except Exception as exc:  # a backend the rules cannot share (e.g. onnx.reference on bfloat16): say so
        row["rules"] = {"error": f"{type(exc).__name__}: {exc}"}
    return row


def corpus(args, work: Path) -> list[tuple[str, Path, str]]:
    """(label, path, kind) of every original model."""
    from light_zoo import write_light
    from make_chains import make_chain

    models = [(p.stem, p, "torchvision") for p in sorted(Path(args.corpus).glob("*.onnx"))] if args.corpus else []
    models += [(p.stem, p, "sample") for p in sorted((HERE.parent / "models").glob("*.onnx"))]
    models += [(p.stem, p, "light zoo") for p in write_light(work / "light")]
    for n in (100, 1000, 5000):
        path = work / f"chain_{n}.onnx"
        onnx.save(make_chain(n), path)
        models.append((f"chain_{n}", path, "chain"))
    import random_models as rm

    for seed in range(args.seeds):
        gen = rm.random_model(seed)
        folder = work / "random" / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        models.append((f"random seed {seed}", rm.save(gen, folder), "random"))
    return models


def wrong_folds(work: Path) -> list[tuple[str, Path, Path]]:
    """(label, original, wrong fold) for each precision loss to catch."""
    from test_validation_proof import bn15_add_model, narrow_fold

    import builders
    import ml_dtypes

    cases = []
    for label, dtype in (("float32 constant rounded into a float16 BN bias (4,000 ULPs)", np.float16),
                         ("float32 constant rounded into a bfloat16 BN bias", ml_dtypes.bfloat16)):
        model = bn15_add_model(dtype)
        cases.append((label, model, narrow_fold(model)))
    for label, narrow in (("folded weights rounded to float16 in a float32 model", np.float16),
                          ("folded weights rounded to bfloat16 in a float32 model", ml_dtypes.bfloat16)):
        model = builders.conv_bn_model(c_in=16, c_out=16)
        wrong = copy.deepcopy(bnfold.fold(model).model)
        for t in wrong.graph.initializer:
            values = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(values.astype(narrow).astype(np.float32), t.name))
        cases.append((label, model, wrong))
    model = builders.conv_bn_model(c_in=16, c_out=16)
    wrong = copy.deepcopy(bnfold.fold(model).model)
    bias = next(t for t in wrong.graph.initializer if t.name.endswith("bias_folded") or t.name == "B")
    values = numpy_helper.to_array(bias).astype(np.float64)
    bias.CopyFrom(numpy_helper.from_array((values * (1 + 2.0 ** -12)).astype(np.float32), bias.name))
    cases.append(("folded bias off by 2^-12 relative (epsilon misread)", model, wrong))
    out = []
    for k, (label, model, wrong) in enumerate(cases):
        a, b = work / f"wrong{k}.onnx", work / f"wrong{k}.folded.onnx"
        onnx.save(model, a)
        onnx.save(wrong, b)
        out.append((label, a, b))
    return out


def render(rows: list[dict]) -> str:
    def cell(ok: bool | None) -> str:
        return "-" if ok is None else "pass" if ok else "**fail**"

    lines = ["# Validation: bnfold's criterion against the old rule and the peers'", "",
             "Generated by `bench/validation_criterion.py` (see its docstring); the JSON beside this file has every "
             "figure. *needed*: the worst output's error in eps (2^-23 for float32) of its scale, the tolerance "
             f"that would have been needed (bnfold's fast pass allows {tolerances.FAST_PASS_EPS:.0f}); *decided by*: "
             "the fast pass, or the exact float64 answer (the fold no farther from it than "
             f"{tolerances.EXACT_FACTOR:.0f}x the original + {tolerances.EXACT_FLOOR_EPS:.0f} eps). "
             "Elementwise rules: |d| <= atol + rtol |x| "
             "on every element of every input set: old bnfold 1e-4 / 1e-3, onnxsim 1e-5 / 1e-4, onnxslim 1e-4 / "
             "1e-3, Polygraphy 1e-5 / 1e-5.", ""]
    for title, expected in (("Correct folds (must pass)", "passed"), ("Wrong folds (must fail)", "failed")):
        chosen = [r for r in rows if r["expected"] == expected]
        lines += [f"## {title}", "", "| model | kind | needed | decided by | bnfold | validation s | "
                  + " | ".join(n for n, _, _ in RULES) + " |", "|" + " --- |" * (6 + len(RULES))]
        for r in chosen:
            worst = max(r["outputs"], key=lambda o: -1 if o["needed"] != o["needed"] else o["needed"], default=None)
            needed = "-" if worst is None or worst["needed"] != worst["needed"] else f"{worst['needed']:.3g}"
            stage = "-" if worst is None else (worst["stage"] or "-")
            mark = r["verdict"] if r["verdict"] == expected else f"**{r['verdict']}**"
            rules = r.get("rules", {}) if all(o["dtype"] == "float32" for o in r["outputs"]) else {}
            lines.append(f"| {r['model']} | {r['kind']} | {needed} | {stage} | {mark} | {r['seconds']:.1f} | "
                         + " | ".join(cell(rules.get(n)) for n, _, _ in RULES) + " |")
        ok = sum(r["verdict"] == expected for r in chosen)
        f32 = [r for r in chosen if all(o["dtype"] == "float32" for o in r["outputs"]) and "error" not in r["rules"]]
        rule_ok = {n: sum(r["rules"].get(n) == (expected == "passed") for r in f32) for n, _, _ in RULES}
        lines += ["", f"bnfold: {ok} of {len(chosen)} as expected. On the {len(f32)} with float32 outputs only (the "
                  "elementwise rules know no other dtype): " + ", ".join(f"{n} {v}" for n, v in rule_ok.items()), ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", help="folder of torchvision exports (bench/export_corpus.py)")
    parser.add_argument("--seeds", type=int, default=200, help="random models of tests/random_models.py")
    parser.add_argument("--work", default="/tmp/bnfold-validation-bench")
    parser.add_argument("--out", default=str(HERE.parent / "docs"))
    parser.add_argument("--render-only", action="store_true", help="render OUT/VALIDATION.md from OUT/validation.json")
    args = parser.parse_args(argv)
    if args.render_only:
        rows = json.loads((Path(args.out) / "validation.json").read_text())
        (Path(args.out) / "VALIDATION.md").write_text(render(rows))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, path, kind in corpus(args, work):
        folded = work / "folded" / kind.replace(" ", "_") / f"{label.replace(' ', '_')}.onnx"
        folded.parent.mkdir(parents=True, exist_ok=True)
        try:
            report = bnfold.optimize(path, folded, validate_output=False)
        except bnfold.BnfoldError as exc:
            print(f"skip {label}: {exc}", file=sys.stderr)
            continue
        if not report.result.folds:
            continue
        rows.append(judge(label, path, folded, "passed", kind))
        print(f"{label}: {rows[-1]['verdict']}", file=sys.stderr)
    for label, original, wrong in wrong_folds(work):
        rows.append(judge(label, original, wrong, "failed", "wrong fold"))
        print(f"{label}: {rows[-1]['verdict']}", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation.json").write_text(json.dumps(jsonout.jsonable(rows), indent=1) + "\n")
    (out / "VALIDATION.md").write_text(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
