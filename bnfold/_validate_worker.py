"""Child process of ``bnfold.validation.validate``: runs both models, writes the comparison as JSON.

Run as ``python -m bnfold._validate_worker REQUEST.json``. It writes what it is doing to the
request's progress file first, so that if the runtime kills the process the parent can say when.
"""

from __future__ import annotations

import json
import sys
import zlib

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


#: Ops that draw random numbers, each with a ``seed`` attribute (used when given).
RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                        "Bernoulli"})


def prepare_for_runtime(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (the worker's own copy, edited in place) in a form the runtimes take alike, with
    the same computation:

    - empty trailing optional outputs dropped (onnxruntime crashes on an opset-9 BN declaring them);
    - repeated node names made unique (onnxruntime refuses two nodes of one name; ONNX allows it);
    - random ops without a ``seed`` get one derived from their output's name, so that the original
      and the folded model, whose random ops the fold never touches, draw the same numbers.
    """
    seen: set[str] = set()
    for graph in _graphs(model):
        _strip_empty_trailing_outputs(graph)
        for node in graph.node:
            if node.name and node.name in seen:
                k = 1
                while f"{node.name}#{k}" in seen:
                    k += 1
                node.name = f"{node.name}#{k}"
            seen.add(node.name)
            if node.op_type in RANDOM_OPS and node.domain in ("", "ai.onnx") and node.output \
                    and not any(a.name == "seed" for a in node.attribute):
                node.attribute.append(onnx.helper.make_attribute("seed", float(zlib.crc32(node.output[0].encode()) % (1 << 24))))
    return model


def _graphs(model: onnx.ModelProto):
    """The main graph, every function body and every subgraph, depth first."""
    stack: list = [model.graph, *model.functions]
    while stack:
        graph = stack.pop()
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                stack.extend(attr.graphs)


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
    ``training_mode=1`` or a statistics output is declared (the pre-14 rule), inference otherwise,
    computed exactly (float64, rounded once to X's dtype: onnx adds its float32 epsilon to a
    float32 variance even for float64 data, 1e-7 off where the float64 tolerance is 1e-9).
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
            if not (training_mode or declared):  # exact: float64, rounded once to X's dtype
                f = [np.asarray(a, dtype=np.float64).reshape(shape) for a in (scale, bias, mean, var)]
                y = (x.astype(np.float64) - f[2]) / np.sqrt(f[3] + float(eps)) * f[0] + f[1]
                return (y.astype(x.dtype),)
            axes = (0,) + tuple(range(2, x.ndim))
            batch_mean, batch_var = x.mean(axis=axes), x.var(axis=axes)
            y = (x - batch_mean.reshape(shape)) / np.sqrt(batch_var.reshape(shape) + eps)
            y = (y * scale.reshape(shape) + bias.reshape(shape)).astype(x.dtype)
            running = (mean * mom + batch_mean * (1 - mom), var * mom + batch_var * (1 - mom))
            extra = (*running, batch_mean, batch_var)[: len(self.onnx_node.output) - 1]
            return (y, *(e.astype(mean.dtype) for e in extra))

    return BatchNormalization


def reference_evaluator(model: onnx.ModelProto):
    """onnx.reference for ``model`` with bnfold's BatchNormalization (``_reference_batchnorm``),
    in model-local functions too: onnx builds a function's evaluator with its own class and no
    ``new_ops``, so the class itself has to bring them."""
    from onnx.reference import ReferenceEvaluator

    bn = _reference_batchnorm()

    class Evaluator(ReferenceEvaluator):
        def __init__(self, proto, *args, new_ops=None, **kwargs):
            super().__init__(proto, *args, new_ops=[bn] if new_ops is None else new_ops, **kwargs)

    return Evaluator(model)


def defaulted(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> list[str]:
    """Inputs whose symbolic dimensions were set to 1 (no ``--input-shape`` for them)."""
    return [vi.name for vi in real_inputs(model) if vi.name not in shapes
            and any(is_symbolic(d) for d in vi.type.tensor_type.shape.dim)]


class Backend:
    """Runs models with onnxruntime (CPU, ORT_DISABLE_ALL), or with onnx.reference where
    onnxruntime has no kernel for the original; both models always run on the same backend."""

    ONNXRUNTIME = "onnxruntime (CPU, ORT_DISABLE_ALL)"
    REFERENCE = "onnx.reference (onnxruntime has no kernel for this model)"

    def __init__(self, original: onnx.ModelProto, feeds: dict[str, np.ndarray], progress: str):
        self.progress = progress
        self.name = self.ONNXRUNTIME
        try:
            if any(v.dtype.name == "bfloat16" for v in feeds.values()):
                raise RuntimeError("NOT_IMPLEMENTED: bfloat16 inputs")
            self.first = self.session(original, "original")
        except Exception as exc:
            if not _no_kernel(exc):
                raise CannotRun(f"onnxruntime cannot load the model: {' '.join(str(exc).split())[:300]}") from None
            self.name = self.REFERENCE
            self.first = self.session(original, "original")

    @property
    def reference(self) -> bool:
        return self.name == self.REFERENCE

    def session(self, model: onnx.ModelProto, which: str):
        """A new session for ``model`` on this backend."""
        if self.reference:
            return reference_evaluator(model)
        _progress(self.progress, f"creating an onnxruntime session for the {which} model")
        return _ort_session(model)

    def run(self, session, feeds: dict[str, np.ndarray], which: str, symbolic: list[str] = ()) -> list:
        _progress(self.progress, f"running the {which} model ({self.name})")
        try:
            return session.run(None, feeds)
        except Exception as exc:
            hint = ""
            if symbolic:
                hint = f" (symbolic dimensions of {', '.join(symbolic)} were set to 1; pass --input-shape NAME=DIMxDIM...)"
            raise CannotRun(f"running the {which} model failed: {' '.join(str(exc).split())[:300]}{hint}") from None


def undetermined(backend: Backend, original: onnx.ModelProto, feeds, first: dict[str, np.ndarray]) -> dict[str, float]:
    """Outputs of the original that a second run (in a new session) does not reproduce
    exactly: name -> largest difference between the two runs (NaN positions must agree too)."""
    again = backend.run(backend.session(original, "original (again)"), feeds, "original (again)")
    moved = {}
    for (name, a), b in zip(first.items(), again):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or not np.array_equal(a, b, equal_nan=np.issubdtype(a.dtype, np.inexact)):
            same = a.shape == b.shape and np.issubdtype(a.dtype, np.number)
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64)) if same else np.array([np.inf])
            finite = diff[np.isfinite(diff)]
            moved[name] = float(finite.max()) if finite.size and finite.size == diff.size else float("inf")
    return moved


def compare(name: str, ref: np.ndarray, got: np.ndarray, atol: float | None, rtol: float | None) -> dict:
    """Errors of ``got`` against ``ref`` and whether every element is within tolerance.

    Finite elements of ``ref`` are compared with ``|got - ref| <= atol + rtol * |ref|``; a NaN or
    an infinity of ``ref`` must be the same in ``got``. ``max_abs``/``max_rel`` are taken over the
    finite elements of ``ref`` (NaN when it has none: nothing numeric was compared), ``max_ref`` is
    its largest finite ``|value|`` (NaN when none). Booleans and integers must match exactly.
    ``informative``: a wrong fold could show here, i.e. some finite ``|value|`` exceeds the
    dtype's default atol (not an override: a loose --atol does not make outputs uninformative),
    or, for booleans, both values occur.
    """
    ref, got = np.asarray(ref), np.asarray(got)
    dtype = ref.dtype.name
    tol = tolerance_for(dtype, atol, rtol)
    result = {"name": name, "dtype": dtype, "shape": list(ref.shape), "atol": tol.atol, "rtol": tol.rtol}
    if ref.shape != got.shape or ref.dtype != got.dtype:
        return {**result, "max_abs": float("inf"), "max_rel": float("inf"), "passed": False, "max_ref": float("nan"),
                "informative": True}
    if not (np.issubdtype(ref.dtype, np.number) or dtype == "bfloat16"):
        equal = bool(np.array_equal(ref, got))
        varies = ref.size > 0 and len(np.unique(ref)) > 1
        return {**result, "max_abs": 0.0 if equal else float("inf"), "max_rel": 0.0 if equal else float("inf"),
                "passed": equal, "max_ref": float(varies), "informative": varies}
    r, g = ref.astype(np.float64), got.astype(np.float64)
    finite = np.isfinite(r)
    special_kept = bool(np.all(np.where(np.isnan(r), np.isnan(g), r == g)[~finite]))
    diff = np.abs(g[finite] - r[finite])
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN in got where ref is finite: as far off as can be
    scale = np.abs(r[finite])
    passed = special_kept and bool(np.all(diff <= tol.atol + tol.rtol * scale))
    if not diff.size:  # nothing finite to compare
        return {**result, "max_abs": float("nan"), "max_rel": float("nan"), "passed": passed, "max_ref": float("nan"),
                "informative": False}
    big = scale > tol.atol
    max_rel = float((diff[big] / scale[big]).max()) if np.any(big) else 0.0
    max_ref = float(scale.max())
    return {**result, "max_abs": float(diff.max()), "max_rel": max_rel, "passed": passed, "max_ref": max_ref,
            "informative": max_ref > tolerance_for(dtype).atol}


def main(request_path: str) -> int:
    with open(request_path) as fh:
        req = json.load(fh)
    report: dict = {"backend": "", "inputs": {}, "outputs": []}
    try:
        _progress(req["progress"], "loading the models")
        # onnx.load would read a side file's tensors with no length to the end of the file
        original = prepare_for_runtime(load_runnable(req["original"]))
        folded = prepare_for_runtime(load_runnable(req["folded"]))
        feeds = make_inputs(original, req["input_shapes"], req["seed"], req["label"])
        report["inputs"] = {k: list(v.shape) for k, v in feeds.items()}
        symbolic = defaulted(original, req["input_shapes"])
        backend = Backend(original, feeds, req["progress"])
        report["backend"] = backend.name
        ref = dict(zip((o.name for o in original.graph.output), backend.run(backend.first, feeds, "original", symbolic)))
        got_list = backend.run(backend.session(folded, "folded"), feeds, "folded", symbolic)
        got = dict(zip((o.name for o in folded.graph.output), got_list))
        if set(ref) != set(got):
            raise CannotRun(f"the models' outputs differ: original {sorted(ref)}, folded {sorted(got)}")
        empty = [name for name, value in ref.items() if np.asarray(value).size == 0]
        if empty:
            raise CannotRun(f"output '{empty[0]}' has no elements with these input shapes: nothing to compare")
        report["outputs"] = [compare(n, ref[n], got[n], req["atol"], req["rtol"]) for n in ref]
        if not all(o["passed"] for o in report["outputs"]):
            # A difference proves a wrong fold only if the original reproduces itself.
            moved = undetermined(backend, original, feeds, ref)
            for out in report["outputs"]:
                out["nondeterministic"] = out["name"] in moved
                out["self_diff"] = moved.get(out["name"], 0.0)
    except CannotRun as exc:
        report["error"] = str(exc)
    except BnfoldError as exc:  # unusable file or input shape: the parent raises it, nothing ran
        report["refused"] = str(exc)
    with open(req["result"], "w") as fh:
        json.dump(report, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
