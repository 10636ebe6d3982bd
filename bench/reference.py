"""Distance from the exact answer: each tool's output against the original graph run in float64.

    python bench/reference.py ORIGINAL.onnx [OUTPUT.onnx ...] [--cache DIR]   # prints JSON on stdout

``validate`` compares a folded model with the float32 original, which mixes the fold's rounding
with the original's own float32 rounding: two correct folds whose weights differ by one ulp here
and there score differently by chance. Here the ORIGINAL graph runs in float64 (every float
tensor, type and Cast widened; onnx.reference with the spec's inference-mode BatchNormalization)
on the same seeded inputs as validation, and every model given, the float32 original included
(the floor no float32 model can beat by much), runs in onnxruntime at ORT_DISABLE_ALL; the
largest absolute error per model is reported, and divided by the largest |output| value.
A separate process per call: onnxruntime can crash on some models.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
from onnx import numpy_helper

FLOAT, DOUBLE = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE


def _widen_tensor(tensor: onnx.TensorProto) -> None:
    if tensor.data_type == FLOAT:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))


def _widen_graph(graph: onnx.GraphProto) -> None:
    for tensor in graph.initializer:
        _widen_tensor(tensor)
    for info in [*graph.input, *graph.output, *graph.value_info]:
        if info.type.tensor_type.elem_type == FLOAT:
            info.type.tensor_type.elem_type = DOUBLE
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.type == onnx.AttributeProto.INT and attr.i == FLOAT:
                attr.i = DOUBLE
            elif attr.type == onnx.AttributeProto.TENSOR:
                _widen_tensor(attr.t)
            elif attr.type == onnx.AttributeProto.GRAPH:
                _widen_graph(attr.g)


def as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` computing in float64 wherever it computed in float32."""
    wide = onnx.ModelProto()
    wide.CopyFrom(model)
    _widen_graph(wide.graph)
    return wide


def exact_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    from bnfold.runtime import reference_batchnorm

    wide_feeds = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}
    session = ReferenceEvaluator(as_float64(model), new_ops=[reference_batchnorm()])
    return [np.asarray(o, dtype=np.float64) for o in session.run(None, wide_feeds)]


def ort_outputs(path: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # unused-initializer warnings are not this script's business
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def cached_exact(path: str, cache: str | None) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """Seeded inputs and the float64 outputs of the model at ``path``, kept in ``cache`` (keyed by
    path, size and modification time) because each tool's output is compared with the same answer."""
    import hashlib
    import os

    from bnfold.runtime import make_inputs, strip_empty_trailing_outputs
    from bnfold.io import load_runnable

    stat = os.stat(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    stored = os.path.join(cache, f"exact-{key}.npz") if cache else None
    if stored and os.path.exists(stored):
        with np.load(stored) as data:
            feeds = {k[len("in:"):]: data[k] for k in data.files if k.startswith("in:")}
            exact = [data[f"out:{i}"] for i in range(sum(k.startswith("out:") for k in data.files))]
        return feeds, exact
    original = load_runnable(path)  # external data read as onnxruntime reads it (onnx.load differs)
    strip_empty_trailing_outputs(original)
    feeds = make_inputs(original, {}, 0)
    exact = exact_outputs(original, feeds)
    if stored:
        os.makedirs(cache, exist_ok=True)
        np.savez(stored, **{f"in:{k}": v for k, v in feeds.items()}, **{f"out:{i}": e for i, e in enumerate(exact)})
    return feeds, exact


def main(argv: list[str]) -> int:
    cache = None
    if "--cache" in argv:
        at = argv.index("--cache")
        cache, argv = argv[at + 1], argv[:at] + argv[at + 2:]
    if not argv:
        print(__doc__)
        return 2
    feeds, exact = cached_exact(argv[0], cache)
    peak = max(float(np.max(np.abs(e))) if e.size else 0.0 for e in exact)
    result = {"peak": peak, "models": {}}
    for path in argv:
        try:
            got = ort_outputs(path, feeds)
            err = max(float(np.max(np.abs(g.astype(np.float64) - e))) if e.size else 0.0 for g, e in zip(got, exact))
            result["models"][path] = {"max_abs": err, "max_abs_over_peak": err / peak if peak else None}
        except Exception as exc:  # a model this runtime cannot run: say so
            result["models"][path] = {"error": " ".join(str(exc).split())[:200]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
