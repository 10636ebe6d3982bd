"""Reading and writing model files, with one-line errors and atomic writes.

Loading turns every way a file can be wrong (missing, a directory, empty, not protobuf,
truncated, failing the ONNX checker, missing external data) into a BnfoldError naming the file.
Writing goes to a temporary file beside the destination and is renamed into place, so a failure
at any point leaves no partial output and never touches an existing file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

from .errors import BnfoldError

#: Files larger than this are checked by the ONNX checker before they are read (see read_model).
CHECK_FIRST_BYTES = 64 << 20

#: protobuf cannot serialize a message of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def load_model(path: str | os.PathLike, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX model (external data included), or raise BnfoldError saying what is wrong."""
    return read_model(path, check)[0]


def read_model(path: str | os.PathLike, check: bool = True) -> tuple[onnx.ModelProto, list[Path]]:
    """Like ``load_model``; also returns the external data files the model's tensors came from."""
    path = Path(path)
    if not path.exists():
        raise BnfoldError(f"{path}: no such file")
    if path.is_dir():
        raise BnfoldError(f"{path}: is a directory, not an ONNX model")
    # The checker parses the file again in C++: for a big file do it before Python holds the
    # bytes, so the two parses never coexist (peak memory); small files get our clearer messages first.
    check_first = check and path.stat().st_size > CHECK_FIRST_BYTES
    if check_first:
        _run_checker(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BnfoldError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise BnfoldError(f"{path}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:
        raise BnfoldError(f"{path}: not an ONNX model (protobuf parse failed: {_one_line(exc)})") from None
    del data
    if not model.graph.node and not model.graph.output:
        raise BnfoldError(f"{path}: not an ONNX model (no graph)")
    if model.ir_version <= 0 or not model.opset_import:
        raise BnfoldError(f"{path}: not an ONNX model (no ir_version or opset_import)")
    external = external_tensors(model)
    base = path.parent.resolve()
    files = sorted({_check_location(path, base, tensor) for tensor in external})
    if check and not check_first:  # before external data is loaded
        _run_checker(path)
    if external:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(base))
        except Exception as exc:
            raise BnfoldError(f"{path}: cannot load external data ({_one_line(exc)})") from None
    return model, files


def _run_checker(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise BnfoldError(f"{path}: invalid ONNX model ({_one_line(exc)})") from None


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Tensors (initializers and Constant values, in every subgraph and function) stored in side files."""
    found: list[onnx.TensorProto] = []

    def visit(nodes, initializers=()) -> None:
        found.extend(t for t in initializers if t.data_location == onnx.TensorProto.EXTERNAL)
        for node in nodes:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_location == onnx.TensorProto.EXTERNAL:
                    found.append(attr.t)
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                    visit(sub.node, sub.initializer)

    visit(model.graph.node, model.graph.initializer)
    for function in model.functions:
        visit(function.node)
    return found


def _check_location(path: Path, base: Path, tensor: onnx.TensorProto) -> Path:
    """The side file of ``tensor``; refused when outside the model's folder (absolute, ``..``, a symlink out)."""
    location = next((e.value for e in tensor.external_data if e.key == "location"), "")
    if not location:
        raise BnfoldError(f"{path}: tensor '{tensor.name}' has external data without a location")
    target = (base / location).resolve()
    if os.path.isabs(location) or ".." in Path(location).parts or not target.is_relative_to(base):
        raise BnfoldError(
            f"{path}: tensor '{tensor.name}' has external data at '{location}', outside the model's folder; refused"
        )
    return target


@contextlib.contextmanager
def staged_output(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield where to write ``dest``: a path of the same name in a private folder beside it.

    On normal exit every file written there (the model and its external data file, if any) is
    renamed into ``dest``'s folder, the model last, so it never points at missing data; on any
    error the folder is removed and nothing at the destination changed.
    """
    dest = Path(dest)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent or "."))
    staged = stage / dest.name
    try:
        yield staged
        files = sorted(stage.iterdir(), key=lambda f: f == staged)  # the model last
        for f in files:
            target = dest.parent / f.name
            os.chmod(f, _mode_for(target))
            os.replace(f, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _mode_for(dest: Path) -> int:
    """The destination's current mode when replacing it, else what the umask gives a new file."""
    try:
        return dest.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool = False) -> int:
    """Serialize ``model`` to ``path``, flushed to disk; returns the bytes written (side file included).

    With ``external_data``, or when the model would exceed protobuf's 2 GB limit, tensors of 1 KiB
    or more go to one side file ``<name>.data`` beside it (the model is changed to point at it).
    """
    path = Path(path)
    if external_data or _weight_bytes(model) > PROTOBUF_LIMIT - (64 << 20):
        data_name = f"{path.name}.data"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        files = [path, path.parent / data_name]
        for f in files:
            if f.exists():
                _fsync(f)
        return sum(f.stat().st_size for f in files if f.exists())
    with open(path, "wb") as fh:
        written = _write_streamed(model, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return written


def _weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the main graph's tensors, from their shapes (upb's ByteSize() serializes the whole
    model to count, which costs a copy of the weights)."""
    def size(t: onnx.TensorProto) -> int:
        if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            return 0
        n = 1
        for d in t.dims:
            n *= d
        return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    total = sum(size(t) for t in model.graph.initializer)
    for node in model.graph.node:
        total += sum(size(a.t) for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    return total


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number


def _shell(message, skip: str):
    """A new message of the same type with every field of ``message`` but ``skip`` (small fields only)."""
    shell = type(message)()
    for descriptor, value in message.ListFields():
        if descriptor.name == skip:
            continue
        target = getattr(shell, descriptor.name)
        repeated = descriptor.is_repeated if hasattr(descriptor, "is_repeated") else descriptor.label == 3
        if repeated:
            target.extend(value)
        elif descriptor.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(shell, descriptor.name, value)
    return shell


def _write_streamed(model: onnx.ModelProto, fh) -> int:
    """Write ``model`` without ever holding its whole serialization: everything but the graph's
    initializers first, then one initializer at a time, each as another ``graph`` field.

    Protobuf parsers merge repeated occurrences of a message field and append repeated fields in
    order, so the file parses to exactly ``model`` (re-serialized, it is byte-identical); peak
    memory grows by the largest tensor instead of by the whole model.
    """
    try:
        chunks = [_shell(model, "graph").SerializeToString()]
        if model.HasField("graph"):
            chunks.append(_field(_GRAPH, _shell(model.graph, "initializer").SerializeToString()))
    except UnicodeDecodeError:  # a text field that is not UTF-8: copy it as bytes, all at once
        return fh.write(model.SerializeToString())
    written = 0
    for chunk in chunks:
        written += fh.write(chunk)
    for tensor in model.graph.initializer:
        written += fh.write(_field(_GRAPH, _field(_INITIALIZER, tensor.SerializeToString())))
    return written


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
