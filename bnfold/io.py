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
    if check:  # before external data is loaded: the checker then sees a small model
        try:
            onnx.checker.check_model(str(path) if external else model)
        except Exception as exc:
            raise BnfoldError(f"{path}: invalid ONNX model ({_one_line(exc)})") from None
    if external:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(base))
        except Exception as exc:
            raise BnfoldError(f"{path}: cannot load external data ({_one_line(exc)})") from None
    return model, files


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
    if external_data or model.ByteSize() > PROTOBUF_LIMIT:
        data_name = f"{path.name}.data"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        files = [path, path.parent / data_name]
        for f in files:
            if f.exists():
                _fsync(f)
        return sum(f.stat().st_size for f in files if f.exists())
    data = model.SerializeToString()
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return len(data)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
