"""Shared helpers of the bnfold test-suite: running models, checking folds, reading results.

Numerical checks run both models in this process, on the same seeded random inputs, with the same
backend: onnxruntime at ORT_DISABLE_ALL (at its default level onnxruntime folds Conv+BN itself and
would hide a wrong fold), or onnx's reference evaluator where onnxruntime has no CPU kernel
(float64 and bfloat16 Conv). Outputs must agree within ``bnfold.tolerances.tolerance_for`` — the
one place that defines tolerances; tests never invent their own.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

import bnfold
from bnfold.tolerances import tolerance_for

#: Symbolic input dimensions are given this size when inputs are generated.
SYMBOLIC_DIM = 2


# -- running models ----------------------------------------------------------------------


def without_empty_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose nodes do not declare empty trailing optional outputs.

    Same semantics; needed because onnxruntime 1.32 crashes the whole process (SIGSEGV) on a
    BatchNormalization declared as ``["Y", "", "", "", ""]``.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for node in model.graph.node:
        while len(node.output) > 1 and node.output[-1] == "":
            node.output.pop()
    return model


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every graph output of ``model`` by name, computed by onnxruntime (CPU, ORT_DISABLE_ALL)."""
    session = ort_session(without_empty_outputs(model))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def run_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every graph output of ``model`` by name, computed by ``onnx.reference.ReferenceEvaluator``.

    Caution: onnx 1.23's reference BatchNormalization uses batch statistics at opsets 7-13 (and
    fails at 7-8); it is right for BN-6 with ``is_test=1`` and from opset 14.
    """
    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model).run(names, feeds)))


BACKENDS = {"onnxruntime": run_ort, "reference": run_reference}


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded standard-normal values for every real (non-initializer) graph input."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        ttype = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else SYMBOLIC_DIM for d in ttype.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def assert_equivalent(
    original: onnx.ModelProto,
    folded: onnx.ModelProto,
    *,
    backend: str = "onnxruntime",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Both models compute the same outputs (same names, dtypes, shapes; values within tolerance).

    Returns the folded model's outputs. Non-finite reference outputs fail the check: a comparison
    of NaN against NaN proves nothing.
    """
    run = BACKENDS[backend]
    feeds = random_feeds(original, seed)
    expected, got = run(original, feeds), run(folded, feeds)
    assert list(got) == list(expected), "the folded model's outputs differ from the original's"
    for name, ref in expected.items():
        out = got[name]
        assert out.dtype == ref.dtype, f"output {name!r}: dtype {out.dtype} != {ref.dtype}"
        assert out.shape == ref.shape, f"output {name!r}: shape {out.shape} != {ref.shape}"
        assert np.all(np.isfinite(ref.astype(np.float64))), f"output {name!r} of the original is not finite"
        tol = tolerance_for(ref.dtype)
        np.testing.assert_allclose(
            out.astype(np.float64), ref.astype(np.float64), atol=tol.atol, rtol=tol.rtol,
            err_msg=f"output {name!r} ({ref.dtype}) changed by folding",
        )
    return got


# -- folding -------------------------------------------------------------------------------


def check_full(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)


def fold_expecting(model: onnx.ModelProto, folds: int = 1) -> bnfold.FoldResult:
    """Fold ``model``; assert exactly ``folds`` folds, no refusal, and a model that passes the full check."""
    result = bnfold.fold(model)
    assert result.refusals == [], [r.reason for r in result.refusals]
    assert len(result.folds) == folds, result.folds
    check_full(result.model)
    return result


def refusal_for(model: onnx.ModelProto) -> bnfold.Refusal:
    """Fold ``model``; assert nothing folded (the very input object comes back); return the one refusal."""
    result = bnfold.fold(model)
    assert result.folds == []
    assert result.model is model
    assert len(result.refusals) == 1, result.refusals
    return result.refusals[0]


# -- reading models ------------------------------------------------------------------------


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def node_named(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    matches = [n for n in model.graph.node if n.name == name]
    assert len(matches) == 1, f"expected one node named {name!r}, found {len(matches)}"
    return matches[0]


def initializer_names(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer}


def initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    matches = [t for t in model.graph.initializer if t.name == name]
    assert len(matches) == 1, f"expected one initializer named {name!r}, found {len(matches)}"
    return matches[0]


def initializer_array(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(initializer(model, name))


def input_names(model: onnx.ModelProto) -> list[str]:
    return [i.name for i in model.graph.input]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie whose parent has not reaped it yet is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:  # gone between the two looks
        return False
    except (OSError, IndexError):  # no /proc to tell: kill(0) said it exists
        return True
    return state != "Z"
