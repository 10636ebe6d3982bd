"""The inputs that validation and latency runs feed the models: shapes and sizes, checked first.

``--input-shape NAME=DIMS`` must fit the model: NAME is one of its (non-initializer) inputs, DIMS
has the declared rank and agrees with every static dimension; a symbolic dimension (a
``dim_param``, no ``dim_value``, or a negative ``dim_value`` as paddle2onnx writes) takes any size.
Symbolic dimensions not given default to 1. Anything else is a usage error (``UsageError``),
found here before a model runs, not a runtime failure reported as "validation failed".

The inputs must also fit in memory: their bytes, from dtype and shape, may be at most
``1 / MEMORY_FRACTION`` of the memory bnfold may use (``limits.usable_memory``: physical memory,
or less under a container's or CI job's limit; random inputs are drawn in float64 before the cast,
and the runtime's activations come on top, so a quarter leaves room for both).
"""

from __future__ import annotations

import onnx

from .errors import UsageError

#: Inputs may take at most this fraction (1/N) of the memory bnfold may use.
MEMORY_FRACTION = 4
#: The bound where no memory size can be read (no ``os.sysconf``, no control group).
FALLBACK_LIMIT = 4 << 30


def spec(name: str, shape) -> str:
    """``X=1x3x224x224``, as ``--input-shape`` writes it."""
    return f"{name}={'x'.join(str(d) for d in shape)}"


def is_symbolic(dim: onnx.TensorShapeProto.Dimension) -> bool:
    """A dimension any size fits: named, unset, or negative (paddle2onnx writes -1)."""
    return not dim.HasField("dim_value") or dim.dim_value < 0


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (in IR 3 every initializer is listed as an input)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _declared(vi: onnx.ValueInfoProto) -> str:
    dims = vi.type.tensor_type.shape.dim
    return "[" + ", ".join((d.dim_param or "?") if is_symbolic(d) else str(d.dim_value) for d in dims) + "]"


def check_input_names(label: str, model: onnx.ModelProto, given: dict[str, list[int]]) -> None:
    """UsageError when ``--input-shape`` names something that is not an input of the model."""
    names = [i.name for i in real_inputs(model)]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise UsageError(f"{label}: --input-shape {spec(unknown[0], given[unknown[0]])}: the model has no input "
                          f"'{unknown[0]}' (inputs: {', '.join(sorted(names)) or 'none'})")


def resolve_shapes(label: str, model: onnx.ModelProto, given: dict[str, list[int]]) -> dict[str, list[int]]:
    """The shape of every tensor input that has one: given (checked against the declared shape) or
    declared (symbolic dimensions 1). Inputs with neither are left out: the caller says what it needs.
    UsageError naming the ``--input-shape`` that does not fit."""
    check_input_names(label, model, given)
    shapes: dict[str, list[int]] = {}
    for vi in real_inputs(model):
        if not vi.type.HasField("tensor_type"):
            continue
        ttype = vi.type.tensor_type
        dims = ttype.shape.dim if ttype.HasField("shape") else None
        if vi.name not in given:
            if dims is not None:
                shapes[vi.name] = [1 if is_symbolic(d) else d.dim_value for d in dims]
            continue
        shape = list(given[vi.name])
        where = f"{label}: --input-shape {spec(vi.name, shape)}: input '{vi.name}'"
        if any(d < 0 for d in shape):
            raise UsageError(f"{where}: a dimension cannot be negative")
        if dims is not None and len(dims) != len(shape):
            raise UsageError(f"{where} has rank {len(dims)} {_declared(vi)}, not {len(shape)}")
        for axis, (dim, size) in enumerate(zip(dims or (), shape)):
            if not is_symbolic(dim) and dim.dim_value != size:
                raise UsageError(f"{where} has size {dim.dim_value} on axis {axis} {_declared(vi)}, not {size}")
        shapes[vi.name] = shape
    return shapes


def memory_limit() -> int:
    """Most bytes the inputs may take: ``1 / MEMORY_FRACTION`` of the memory this process may use
    (``limits.usable_memory``: physical memory, or a container's limit)."""
    from .limits import usable_memory

    usable = usable_memory()
    return FALLBACK_LIMIT if usable is None else usable // MEMORY_FRACTION


def input_bytes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> int:
    """Bytes the inputs of ``shapes`` take, from their dtypes (inputs of unknown type count 0)."""
    total = 0
    for vi in real_inputs(model):
        if vi.name not in shapes:
            continue
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).itemsize
        except (KeyError, ValueError, TypeError):
            continue  # a type the run refuses anyway, with its own message
        n = itemsize
        for d in shapes[vi.name]:
            n *= d
        total += n
    return total


def check_input_bytes(label: str, model: onnx.ModelProto, shapes: dict[str, list[int]]) -> None:
    """UsageError when the inputs of ``shapes`` (from ``resolve_shapes``) would take more than
    ``memory_limit()`` bytes: decided from dtypes and shapes, before anything is allocated."""
    total = input_bytes(model, shapes)
    limit = memory_limit()
    if total > limit:
        specs = ", ".join(spec(name, shape) for name, shape in shapes.items())
        raise UsageError(f"{label}: cannot allocate inputs of {_size(total)} for {specs} (bnfold allows "
                          f"{_size(limit)}: 1/{MEMORY_FRACTION} of the memory it may use)")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def parse_input_shapes(specs: list[str] | tuple[str, ...]) -> dict[str, list[int]]:
    """Parse ``name=1x3x224x224`` specs (the CLI's ``--input-shape``) into a dict; ValueError if malformed."""
    shapes: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition("=")
        try:
            shape = [int(d) for d in dims.lower().split("x")] if dims else []
        except ValueError:
            shape = []
        if not sep or not name or not shape or any(d < 1 for d in shape):
            raise UsageError(f"bad input shape '{spec}': expected NAME=DIMxDIMx... with dims >= 1, e.g. input=1x3x224x224")
        shapes[name] = shape
    return shapes
