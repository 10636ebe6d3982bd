"""Child process of ``bnfold.validation.validate``: runs both models, writes the comparison as JSON.

Run as ``python -m bnfold._validate_worker REQUEST.json``. It writes what it is doing to the
request's progress file first, so that if the runtime kills the process the parent can say when.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx

from .errors import BnfoldError
from .inputs import check_input_bytes, is_symbolic, real_inputs, resolve_shapes
from .io import load_runnable
from .tolerances import tolerance_for


class CannotRun(Exception):
    """The models could not be run as given (shape, kernel, runtime error): a one-line reason."""


def _progress(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _strip_empty_trailing_outputs(graph: onnx.GraphProto | onnx.FunctionProto) -> None:
    """Drop declared-but-empty optional outputs (``['y', '', '']`` → ``['y']``): same semantics,
    and onnxruntime crashes on some (opset-9 BatchNormalization)."""
    for node in graph.node:
        while len(node.output) > 1 and node.output[-1] == "":
            node.output.pop()
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _strip_empty_trailing_outputs(attr.g)
            for g in attr.graphs:
                _strip_empty_trailing_outputs(g)


def make_inputs(model: onnx.ModelProto, shapes: dict[str, list[int]], seed: int,
                label: str = "the model") -> dict[str, np.ndarray]:
    """Seeded random inputs: normal floats, small non-negative integers, random booleans.

    BnfoldError (a usage error, ``bnfold.inputs``) when a given shape does not fit the model or
    the inputs would not fit in memory, decided before anything is allocated; CannotRun when an
    input cannot be made at all.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    inputs = real_inputs(model)
    resolved = resolve_shapes(label, model, shapes)
    check_input_bytes(label, model, resolved)
    for vi in inputs:
        ttype = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise CannotRun(f"input '{vi.name}' is not a tensor; bnfold validates tensor inputs only")
        if vi.name not in resolved:
            raise CannotRun(f"input '{vi.name}' has no declared shape; pass --input-shape {vi.name}=DIMxDIM...")
        shape = resolved[vi.name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        if dtype == np.bool_:
            value = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            value = rng.integers(0, 4, size=shape).astype(dtype)
        else:
            value = rng.standard_normal(shape).astype(dtype)
        feeds[vi.name] = np.asarray(value, dtype=dtype)  # 0-d draws come back as numpy scalars
    return feeds


def _ort_session(model: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _no_kernel(exc: Exception) -> bool:
    text = str(exc)
    return "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text or "not supported" in text.lower()


def _reference_batchnorm():
    """BatchNormalization for onnx.reference with the spec's mode selection.

    onnx.reference 1.23 applies batch statistics to every BN before opset 14 (it defaults
    is_test/training to on), which would make a correct fold look wrong. Here: training mode when
    ``training_mode=1`` or a statistics output is declared (the pre-14 rule), inference otherwise.
    """
    from onnx.reference.op_run import OpRun

    class BatchNormalization(OpRun):
        op_domain = ""

        def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None, training_mode=None,
                 spatial=None, is_test=None):
            eps = 1e-5 if epsilon is None else epsilon
            mom = 0.9 if momentum is None else momentum
            declared = [o for o in self.onnx_node.output[1:] if o]
            shape = (1, -1) + (1,) * (x.ndim - 2)
            if not (training_mode or declared):
                y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
                return ((y * scale.reshape(shape) + bias.reshape(shape)).astype(x.dtype),)
            axes = (0,) + tuple(range(2, x.ndim))
            batch_mean, batch_var = x.mean(axis=axes), x.var(axis=axes)
            y = (x - batch_mean.reshape(shape)) / np.sqrt(batch_var.reshape(shape) + eps)
            y = (y * scale.reshape(shape) + bias.reshape(shape)).astype(x.dtype)
            running = (mean * mom + batch_mean * (1 - mom), var * mom + batch_var * (1 - mom))
            extra = (*running, batch_mean, batch_var)[: len(self.onnx_node.output) - 1]
            return (y, *(e.astype(mean.dtype) for e in extra))

    return BatchNormalization


def defaulted(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> list[str]:
    """Inputs whose symbolic dimensions were set to 1 (no ``--input-shape`` for them)."""
    return [vi.name for vi in real_inputs(model) if vi.name not in shapes
            and any(is_symbolic(d) for d in vi.type.tensor_type.shape.dim)]


def run_pair(original, folded, feeds, progress: str, symbolic: list[str] = ()) -> tuple[str, list, list]:
    """Outputs of both models with the same backend: onnxruntime, or onnx.reference where ORT has no kernel."""
    try:
        _progress(progress, "creating an onnxruntime session for the original model")
        sessions = [_ort_session(original)]
        _progress(progress, "creating an onnxruntime session for the folded model")
        sessions.append(_ort_session(folded))
        backend = "onnxruntime (CPU, ORT_DISABLE_ALL)"
        ort_feeds = {k: v for k, v in feeds.items() if v.dtype.name != "bfloat16"}
        if len(ort_feeds) != len(feeds):
            raise RuntimeError("NOT_IMPLEMENTED: bfloat16 inputs")
    except Exception as exc:
        if not _no_kernel(exc):
            raise CannotRun(f"onnxruntime cannot load the model: {' '.join(str(exc).split())[:300]}") from None
        from onnx.reference import ReferenceEvaluator

        bn = _reference_batchnorm()
        sessions = [ReferenceEvaluator(original, new_ops=[bn]), ReferenceEvaluator(folded, new_ops=[bn])]
        backend = "onnx.reference (onnxruntime has no kernel for this model)"
        ort_feeds = feeds
    results = []
    for which, session in zip(("original", "folded"), sessions):
        _progress(progress, f"running the {which} model ({backend})")
        try:
            results.append(session.run(None, ort_feeds))
        except Exception as exc:
            hint = ""
            if symbolic:
                hint = f" (symbolic dimensions of {', '.join(symbolic)} were set to 1; pass --input-shape NAME=DIMxDIM...)"
            raise CannotRun(f"running the {which} model failed: {' '.join(str(exc).split())[:300]}{hint}") from None
    return backend, results[0], results[1]


def compare(name: str, ref: np.ndarray, got: np.ndarray, atol: float | None, rtol: float | None) -> dict:
    """Max abs/rel error of ``got`` against ``ref`` and whether every element is within tolerance."""
    ref, got = np.asarray(ref), np.asarray(got)
    dtype = ref.dtype.name
    tol = tolerance_for(dtype, atol, rtol)
    result = {"name": name, "dtype": dtype, "shape": list(ref.shape), "atol": tol.atol, "rtol": tol.rtol}
    if ref.shape != got.shape or ref.dtype != got.dtype:
        return {**result, "max_abs": float("inf"), "max_rel": float("inf"), "passed": False}
    if not (np.issubdtype(ref.dtype, np.number) or dtype == "bfloat16"):
        equal = bool(np.array_equal(ref, got))
        return {**result, "max_abs": 0.0 if equal else float("inf"), "max_rel": 0.0 if equal else float("inf"), "passed": equal}
    r, g = ref.astype(np.float64), got.astype(np.float64)
    both_nan = np.isnan(r) & np.isnan(g)
    same_inf = np.isinf(r) & (r == g)
    diff = np.where(both_nan | same_inf, 0.0, np.abs(g - r))
    diff = np.where(np.isnan(diff), np.inf, diff)
    max_abs = float(diff.max()) if diff.size else 0.0
    big = np.abs(r) > tol.atol
    max_rel = float((diff[big] / np.abs(r[big])).max()) if np.any(big) else 0.0
    passed = bool(np.all(diff <= tol.atol + tol.rtol * np.abs(np.nan_to_num(r))))
    finite = np.abs(r[np.isfinite(r)])
    max_ref = float(finite.max()) if finite.size else float("nan")
    return {**result, "max_abs": max_abs, "max_rel": max_rel, "passed": passed, "max_ref": max_ref}


def main(request_path: str) -> int:
    with open(request_path) as fh:
        req = json.load(fh)
    report: dict = {"backend": "", "inputs": {}, "outputs": []}
    try:
        _progress(req["progress"], "loading the models")
        # onnx.load would read a side file's tensors with no length to the end of the file
        original, folded = load_runnable(req["original"]), load_runnable(req["folded"])
        for model in (original, folded):
            _strip_empty_trailing_outputs(model.graph)
            for function in model.functions:
                _strip_empty_trailing_outputs(function)
        feeds = make_inputs(original, req["input_shapes"], req["seed"], req["label"])
        report["inputs"] = {k: list(v.shape) for k, v in feeds.items()}
        backend, ref, got = run_pair(original, folded, feeds, req["progress"],
                                     defaulted(original, req["input_shapes"]))
        report["backend"] = backend
        ref = dict(zip((o.name for o in original.graph.output), ref))
        got = dict(zip((o.name for o in folded.graph.output), got))
        if set(ref) != set(got):
            raise CannotRun(f"the models' outputs differ: original {sorted(ref)}, folded {sorted(got)}")
        empty = [name for name, value in ref.items() if np.asarray(value).size == 0]
        if empty:
            raise CannotRun(f"output '{empty[0]}' has no elements with these input shapes: nothing to compare")
        report["outputs"] = [compare(n, ref[n], got[n], req["atol"], req["rtol"]) for n in ref]
    except CannotRun as exc:
        report["error"] = str(exc)
    except BnfoldError as exc:  # unusable file or input shape: the parent raises it, nothing ran
        report["refused"] = str(exc)
    with open(req["result"], "w") as fh:
        json.dump(report, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
