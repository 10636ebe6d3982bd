"""Is FOLDED comparable with MODEL? ``bench`` calls a latency difference a speedup of folding, which
only means something when FOLDED computes what MODEL computes. Two checks, both before any timing:

1. **Interface** (in the parent, on the model protos; ``check_interface``): FOLDED has
   MODEL's graph inputs — same names, element types and ranks, and every static dimension of
   FOLDED fits the shape the inputs are made with — and, unless the output check is off, MODEL's
   graph outputs (same names and element types). Inputs are always checked: both models are fed
   the same tensors.
2. **Outputs** (in the measuring child, ``bnfold.latency._worker``): both models run once on the
   same seeded input with onnxruntime on CPU at ``ORT_DISABLE_ALL`` (as validation runs them), and
   every output of MODEL must agree with FOLDED's output of that name within
   ``bnfold.tolerances.tolerance_for(dtype)`` (exact for non-float outputs); ``output_differences``
   says what does not.

A difference is a usage error naming FOLDED (``BnfoldError``, exit 2). ``--no-check-outputs`` skips
the output half of 1 and all of 2, for users timing models that deliberately compute different
things; the report then says the outputs were not compared.
"""

from __future__ import annotations

import onnx

from ..errors import BnfoldError, ModelError
from ..inputs import is_symbolic, real_inputs

#: What the refusal adds, so the user knows what bench expects and how to time other models anyway.
EXPECTED = "bench times a model against its folded version"
OPT_OUT = "pass --no-check-outputs to time models that compute different things"


def _type(vi: onnx.ValueInfoProto) -> str:
    kind = vi.type.WhichOneof("value")
    if kind != "tensor_type":
        return kind or "untyped"
    return onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()


def _dims(vi: onnx.ValueInfoProto) -> list[onnx.TensorShapeProto.Dimension] | None:
    ttype = vi.type.tensor_type
    return list(ttype.shape.dim) if vi.type.HasField("tensor_type") and ttype.HasField("shape") else None


def _shown(dims) -> str:
    return "[" + ", ".join((d.dim_param or "?") if is_symbolic(d) else str(d.dim_value) for d in dims) + "]"


def _names(names) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _missing_and_extra(kind: str, ours: list[str], theirs: list[str]) -> list[str]:
    out = []
    missing = [n for n in ours if n not in theirs]
    extra = [n for n in theirs if n not in ours]
    if missing:
        out.append(f"it has no {kind} {_names(missing)}")
    if extra:
        out.append(f"it has {kind} {_names(extra)} that the original lacks")
    return out


def input_differences(original: onnx.ModelProto, folded: onnx.ModelProto, shapes: dict[str, list[int]]) -> list[str]:
    """What in ``folded``'s graph inputs does not take what ``original`` is fed (empty: nothing).
    ``shapes``: the shapes the inputs are made with (``bnfold.inputs.resolve_shapes`` of the original)."""
    ours = {vi.name: vi for vi in real_inputs(original)}
    theirs = {vi.name: vi for vi in real_inputs(folded)}
    diffs = _missing_and_extra("input", list(ours), list(theirs))
    for name in (n for n in ours if n in theirs):
        a, b = ours[name], theirs[name]
        if _type(a) != _type(b):
            diffs.append(f"input '{name}' is {_type(b)}, not {_type(a)}")
            continue
        dims, made = _dims(b), shapes.get(name)
        if dims is None:
            continue
        rank = len(made) if made is not None else len(_dims(a) or dims)
        if len(dims) != rank:
            diffs.append(f"input '{name}' has rank {len(dims)} {_shown(dims)}, not {rank}")
        elif made is not None and any(not is_symbolic(d) and d.dim_value != s for d, s in zip(dims, made)):
            diffs.append(f"input '{name}' is {_shown(dims)}, and the inputs are made {'x'.join(map(str, made))}")
    return diffs


def declared_output_differences(original: onnx.ModelProto, folded: onnx.ModelProto) -> list[str]:
    """What in ``folded``'s declared graph outputs differs from ``original``'s: names, element types."""
    ours = {vi.name: vi for vi in original.graph.output}
    theirs = {vi.name: vi for vi in folded.graph.output}
    diffs = _missing_and_extra("output", list(ours), list(theirs))
    for name in (n for n in ours if n in theirs):
        a, b = _type(ours[name]), _type(theirs[name])
        if a != b and "untyped" not in (a, b):  # an output may leave its type to shape inference
            diffs.append(f"output '{name}' is {b}, not {a}")
    return diffs


def check_interface(original_label: str, original: onnx.ModelProto, folded_label: str, folded: onnx.ModelProto,
                    shapes: dict[str, list[int]], *, outputs: bool = True) -> None:
    """BnfoldError naming ``folded_label`` when the inputs differ, or (``outputs``) the declared outputs."""
    inputs = input_differences(original, folded, shapes)
    diffs = inputs + (declared_output_differences(original, folded) if outputs else [])
    if diffs:
        hint = "" if inputs else f"; {OPT_OUT}"  # different inputs cannot be timed on the same inputs at all
        raise ModelError(f"{folded_label}: not comparable with {original_label}: {'; '.join(diffs)} "
                          f"({EXPECTED}, on the same inputs{hint})")


def output_differences(comparisons: list[dict]) -> list[str]:
    """The outputs that disagree, from ``bnfold._validate_worker.compare`` results (plus
    ``{"name", "missing": True}`` for an output FOLDED does not produce), one phrase each."""
    diffs = []
    for c in comparisons:
        if c.get("missing"):
            diffs.append(f"it produces no output '{c['name']}'")
        elif c.get("folded_shape") is not None and c["folded_shape"] != c["shape"]:
            diffs.append(f"output '{c['name']}' has shape {c['folded_shape']}, not {c['shape']}")
        elif c.get("folded_dtype") is not None and c["folded_dtype"] != c["dtype"]:
            diffs.append(f"output '{c['name']}' is {c['folded_dtype']}, not {c['dtype']}")
        elif not c["passed"]:
            diffs.append(f"output '{c['name']}' differs by up to {c['max_abs']:.3g} (tolerance {c['atol']:g} "
                         f"+ {c['rtol']:g}·|original|)")
    return diffs


def outputs_refusal(folded_label: str, original_label: str, diffs: list[str]) -> str:
    """The one-line refusal for outputs that disagree."""
    return (f"{folded_label}: not comparable with {original_label}: on the same seeded input "
            f"{'; '.join(diffs)} ({EXPECTED}; {OPT_OUT})")
