"""Running models in bnfold's child processes (validation, latency): the parts both need.

- ``prepare_for_runtime``: the same computation in a form every runtime here takes alike;
- ``Backend``: onnxruntime (CPU, ORT_DISABLE_ALL: its own fusions would fold the original's BN
  too and hide an error) or, where onnxruntime has no kernel for the model (float64 or bfloat16
  Conv), onnx.reference with a BatchNormalization of the spec's semantics;
- ``make_inputs``: one seeded random input set with declared shapes (bench; validation chooses
  its shapes and sets itself, see ``bnfold.shapes`` and ``bnfold.feeds``).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable

import numpy as np
import onnx

from .inputs import check_input_bytes, real_inputs, resolve_shapes
from .text import one_line


class CannotRun(Exception):
    """The models could not be run as given (shape, kernel, runtime error): a one-line reason."""


_ORT_STATUS = re.compile(r"\[ONNXRuntimeError\] : \d+ : ([A-Z_]+) : ")
_CPP_SOURCE = re.compile(r"\S+\.(?:cc|cpp|cxx|h|hpp):\d+ ")
_CPP_DECLARATOR = re.compile(r"[\w:<>,*&~ \[\]]+")  # ``virtual Status onnxruntime::Foo<T>::Compute``


def error_text(exc: BaseException | str, limit: int = 300) -> str:
    """A runtime's error as one line (``text.one_line``), onnxruntime's boilerplate taken out so that
    the reason fits: ``[ONNXRuntimeError] : 1 : FAIL : /src/model.cc:256 onnxruntime::Model::Model(...)
    Unsupported model IR version: 15, ...`` becomes ``FAIL: Unsupported model IR version: 15, ...``."""
    text = str(exc).strip()
    status = _ORT_STATUS.match(text)
    if status is None:
        return one_line(text, limit)
    text = text[status.end():]
    source = _CPP_SOURCE.match(text)
    if source is not None:  # the C++ file:line, then the function and its parameters: no reason in them
        rest = text[source.end():]
        opening = rest.find("(")
        if opening > 0 and _CPP_DECLARATOR.fullmatch(rest[:opening]):
            depth = 0
            for end, char in enumerate(rest[opening:], opening):
                depth += (char == "(") - (char == ")")
                if depth == 0:
                    text = rest[end + 1:].strip().removeprefix("const ").lstrip()
                    break
    return one_line(f"{status.group(1)}: {text}", limit)


def strip_empty_trailing_outputs(model: onnx.ModelProto) -> int:
    """Drop declared-but-empty optional outputs (``['y', '', '']`` → ``['y']``) in every graph of
    ``model`` (subgraphs and functions too): same semantics, and onnxruntime crashes on some
    (opset-9 BatchNormalization). Returns how many were dropped."""
    dropped = 0
    for graph in graphs(model):
        for node in graph.node:
            while len(node.output) > 1 and node.output[-1] == "":
                node.output.pop()
                dropped += 1
    return dropped


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
    strip_empty_trailing_outputs(model)
    for graph in graphs(model):
        for node in graph.node:
            if node.name and node.name in seen:
                k = 1
                while f"{node.name}#{k}" in seen:
                    k += 1
                node.name = f"{node.name}#{k}"
            seen.add(node.name)
            if node.op_type in RANDOM_OPS and node.domain in ("", "ai.onnx") and node.output \
                    and not any(a.name == "seed" for a in node.attribute):
                seed = float(zlib.crc32(node.output[0].encode()) % (1 << 24))
                node.attribute.append(onnx.helper.make_attribute("seed", seed))
    return model


def graphs(model: onnx.ModelProto):
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
    """Seeded random inputs with the declared shapes (symbolic dims 1, ``shapes`` override):
    normal floats, small non-negative integers, random booleans.

    BnfoldError (a usage error, ``bnfold.inputs``) when a given shape does not fit the model or
    the inputs would not fit in memory, decided before anything is allocated; CannotRun when an
    input cannot be made at all.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    resolved = resolve_shapes(label, model, shapes)
    check_input_bytes(label, model, resolved)
    for vi in real_inputs(model):
        if not vi.type.HasField("tensor_type"):
            raise CannotRun(f"input '{vi.name}' is not a tensor; bnfold validates tensor inputs only")
        if vi.name not in resolved:
            raise CannotRun(f"input '{vi.name}' has no declared shape; pass --input-shape {vi.name}=DIMxDIM...")
        shape = resolved[vi.name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if dtype == np.bool_:
            value = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            value = rng.integers(0, 4, size=shape).astype(dtype)
        else:
            value = rng.standard_normal(shape).astype(dtype)
        feeds[vi.name] = np.asarray(value, dtype=dtype)  # 0-d draws come back as numpy scalars
    return feeds


def ort_session(model: onnx.ModelProto):
    """An onnxruntime CPU session at ORT_DISABLE_ALL."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def no_kernel(exc: Exception) -> bool:
    """Whether onnxruntime refused a model for want of a kernel (not for being invalid)."""
    text = str(exc)
    return "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text or "not supported" in text.lower()


def reference_batchnorm():
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
            eps = float(np.float32(1e-5)) if epsilon is None else epsilon  # the float attribute's default
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
    """onnx.reference for ``model`` with bnfold's BatchNormalization (``reference_batchnorm``),
    in model-local functions too: onnx builds a function's evaluator with its own class and no
    ``new_ops``, so the class itself has to bring them."""
    from onnx.reference import ReferenceEvaluator

    bn = reference_batchnorm()

    class Evaluator(ReferenceEvaluator):
        def __init__(self, proto, *, new_ops=None, **kwargs):  # onnx passes all but proto by keyword
            super().__init__(proto, new_ops=[bn] if new_ops is None else new_ops, **kwargs)

    return Evaluator(model)


class Backend:
    """Runs models with onnxruntime (CPU, ORT_DISABLE_ALL), or with onnx.reference where
    onnxruntime has no kernel for ``first`` (the model the backend is chosen with); all models of
    one comparison run on one backend. ``progress``: called with what is being done (a worker's
    ``child.Progress.stage``: a crash of the runtime then names the step)."""

    ONNXRUNTIME = "onnxruntime (CPU, ORT_DISABLE_ALL)"
    REFERENCE = "onnx.reference (onnxruntime has no kernel for this model)"

    def __init__(self, first: onnx.ModelProto, progress: Callable[[str], None] | None = None,
                 which: str = "original", reference_only: bool = False):
        self.progress = progress or (lambda text: None)
        self.name = self.REFERENCE if reference_only else self.ONNXRUNTIME
        bfloat16 = any(vi.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16 for vi in real_inputs(first))
        if bfloat16:  # onnxruntime takes no bfloat16 input on CPU
            self.name = self.REFERENCE
        try:
            self.first = self.session(first, which)
        except Exception as exc:
            if self.reference or not no_kernel(exc):
                raise CannotRun(f"{'onnx.reference' if self.reference else 'onnxruntime'} cannot load the {which} "
                                f"model: {error_text(exc)}") from None
            self.name = self.REFERENCE
            self.first = self.session(first, which)

    @property
    def reference(self) -> bool:
        return self.name == self.REFERENCE

    def session(self, model: onnx.ModelProto, which: str):
        """A new session for ``model`` on this backend."""
        self.progress(f"creating a session for the {which} model ({self.name})")
        if self.reference:
            return reference_evaluator(model)
        return ort_session(model)

    def run(self, session, feeds: dict[str, np.ndarray], which: str, hint: str = "") -> list[np.ndarray]:
        """The outputs of ``session`` on ``feeds``; CannotRun naming ``which`` when it fails."""
        self.progress(f"running the {which} model ({self.name})")
        try:
            return [np.asarray(v) for v in session.run(None, feeds)]
        except Exception as exc:
            raise CannotRun(f"running the {which} model failed: {error_text(exc)}{hint}") from None
