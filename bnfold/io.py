"""Reading and writing model files, with one-line errors and atomic writes.

Loading turns every way a file can be wrong (missing, a directory, empty, not protobuf,
truncated, failing the ONNX checker, missing external data) into a BnfoldError naming the file.
Writing goes to a temporary file beside the destination and is renamed into place, so a failure
at any point leaves no partial output and never touches an existing file.
"""

from __future__ import annotations

import contextlib
import os
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
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent) or ".")
    except Exception as exc:
        raise BnfoldError(f"{path}: cannot load external data ({_one_line(exc)})") from None
    if check:
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            raise BnfoldError(f"{path}: invalid ONNX model ({_one_line(exc)})") from None
    return model


@contextlib.contextmanager
def atomic_output(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on normal exit it is renamed to ``dest``, otherwise removed."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, _mode_for(dest))  # mkstemp makes 0600; the result should look like any other file
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def _mode_for(dest: Path) -> int:
    """The destination's current mode when replacing it, else what the umask gives a new file."""
    try:
        return dest.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def write_model(model: onnx.ModelProto, path: str | os.PathLike) -> int:
    """Serialize ``model`` to ``path`` (flushed to disk); returns the number of bytes written."""
    if model.ByteSize() > PROTOBUF_LIMIT:
        raise BnfoldError(f"{path}: the folded model exceeds protobuf's 2 GB limit (external data output is not supported yet)")
    data = model.SerializeToString()
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return len(data)
