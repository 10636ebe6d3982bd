"""Reading and writing model files, with one-line errors and atomic writes.

Loading turns every way a file can be wrong (missing, a directory, empty, not protobuf,
truncated, failing the ONNX checker, missing external data) into a ModelError naming the file.
``ModelFile.read`` gives the model with the files it reads and the reader of its tensors (what the
engine is handed: it never opens a file itself).
Writing goes to a temporary file beside the destination and is renamed into place, so a failure
at any point leaves no partial output and never touches an existing file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import mmap
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, cast

import numpy as np
import onnx
from onnx import numpy_helper

from . import wire
from .scan import is_regular, kind_of
from .errors import BnfoldError, ModelError
from .staging import check_fits
from .text import one_line

if TYPE_CHECKING:
    from .folding import ModelSource

#: Files larger than this are checked by the ONNX checker before they are read (see read_model).
CHECK_FIRST_BYTES = 64 << 20

#: With ``read_model(lazy=True)``, main-graph initializers of at least this many bytes stay on disk.
LAZY_BYTES = 1024

#: protobuf cannot serialize a message of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: str | os.PathLike, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX model (external data included), or raise ModelError saying what is wrong."""
    return ModelFile.read(path, check).proto


def read_model(path: str | os.PathLike, check: bool = True, lazy: bool = False) -> tuple[onnx.ModelProto, list[Path]]:
    """``ModelFile.read(path, check, lazy)`` as a pair: the model and its external data files."""
    model = ModelFile.read(path, check, lazy)
    return model.proto, list(model.data_files)


def _set_data(tensor: onnx.TensorProto, data: bytes) -> None:
    del tensor.external_data[:]
    tensor.ClearField("data_location")
    tensor.raw_data = data


class _Source:
    """Where the external data of a model's tensors is read from (a ModelFile, or a bare folder)."""

    def locate(self, tensor: onnx.TensorProto) -> tuple[Path, int, int]:
        """``(file, offset, length)`` of ``tensor``'s external data."""
        raise NotImplementedError

    def read_tensor(self, tensor: onnx.TensorProto) -> np.ndarray:
        """The values of ``tensor`` (an initializer or a Constant's value), its external data included."""
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            return numpy_helper.to_array(tensor)
        data = self.read_bytes(tensor)
        if sys.byteorder == "little" and tensor.data_type not in _FOUR_BIT and tensor_nbytes(tensor) == len(data) > 0:
            # Plain fixed-size elements: the bytes are the array (one copy of the data, not three).
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            return np.frombuffer(data, dtype=dtype).reshape(tuple(tensor.dims))
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)  # no data in it: small
        _set_data(copy, data)
        return numpy_helper.to_array(copy)

    def read_bytes(self, tensor: onnx.TensorProto) -> bytes:
        """``tensor``'s external data bytes: exactly its span, never more (ModelError if the file is shorter)."""
        target, offset, length = self.locate(tensor)
        with open(target, "rb", buffering=0) as fh:
            data = os.pread(fh.fileno(), length, offset) if length else b""
            if len(data) < length:  # one read returns at most 2 GiB, or the file is shorter than the span
                pieces, got = [data], len(data)
                while got < length:
                    piece = os.pread(fh.fileno(), length - got, offset + got)
                    if not piece:
                        raise self._ended_early(tensor)
                    pieces.append(piece)
                    got += len(piece)
                data = b"".join(pieces)
        return data

    def load(self, tensor: onnx.TensorProto) -> None:
        """Read an external tensor's data into the tensor itself."""
        _set_data(tensor, self.read_bytes(tensor))

    def copy_data(self, tensor: onnx.TensorProto, out, scratch: _Scratch) -> int:
        """Copy an external tensor's data bytes from its file to ``out``, a piece at a time."""
        target, offset, length = self.locate(tensor)
        written = 0
        buffer = scratch.view(min(COPY_CHUNK, length))
        with open(target, "rb", buffering=0) as src:
            src.seek(offset)
            while written < length:
                n = src.readinto(buffer[:min(len(buffer), length - written)])
                if not n:
                    raise self._ended_early(tensor)
                written += out.write(buffer[:n])
        return written

    def _ended_early(self, tensor: onnx.TensorProto) -> ModelError:
        return ModelError(f"tensor '{tensor.name}': its external data file ended early")


@dataclasses.dataclass(frozen=True)
class ModelFile(_Source):
    """A model read from its file (``ModelFile.read``), with the files its tensors are read from.

    Read lazily, the model holds its structure only: big main-graph initializers stay on disk as
    external-data references (to the model's own file or to its side files), every one checked
    when it was read (inside the model's folder, a regular file, long enough). ``read_tensor``
    reads one when a fold needs it (it is the ``TensorReader`` the engine is handed), and
    ``write_model(..., source=model_file)`` copies the others straight from their files.

    Attributes:
        proto: the model (read lazily: its structure, with external-data references).
        path: the file it was read from, as given.
        folder: the folder its external data locations are relative to (``path``'s, resolved).
        data_files: the external data files its tensors come from (resolved, sorted; its own file
            is not one of them, even when a lazily read model's references point at it).
        sizes: the size in bytes of each file it reads (its own file and its data files, resolved),
            when it was read.
    """

    proto: onnx.ModelProto
    path: Path
    folder: Path
    data_files: tuple[Path, ...]
    sizes: Mapping[Path, int]
    #: Each external data location of the model -> the file it was checked to be (resolved).
    _targets: Mapping[str, Path] = dataclasses.field(repr=False)

    @classmethod
    def read(cls, path: str | os.PathLike, check: bool = True, lazy: bool = False) -> ModelFile:
        """Read the model at ``path``, or raise ModelError saying what is wrong, in one line.

        With ``lazy``, the main graph's initializers stay on disk: those stored in the file itself
        become external-data references to the file (see ``bnfold.wire``), those in side files are
        not loaded; every other tensor's data is in memory. ``check`` runs the ONNX checker.
        """
        path = Path(path)
        if not path.exists():
            raise ModelError(f"{path}: no such file")
        if path.is_dir():
            raise ModelError(f"{path}: is a directory, not an ONNX model")
        if not is_regular(path):  # a FIFO would block the read, /dev/zero never end it
            raise ModelError(f"{path}: {kind_of(path)}, not a regular file: not read")
        model = _read_skeleton(path) if lazy else None
        skeleton = model is not None
        # The checker parses the file again in C++: for a big file do it before Python holds the
        # bytes, so the two parses never coexist (peak memory); small files get our clearer messages first.
        check_first = check and not skeleton and path.stat().st_size > CHECK_FIRST_BYTES
        if check_first:
            _run_checker(path)
        if model is None:
            model = _parse(path)
        if not model.graph.node and not model.graph.output:
            raise ModelError(f"{path}: not an ONNX model (no graph)")
        if model.ir_version <= 0 or not model.opset_import:
            raise ModelError(f"{path}: not an ONNX model (no ir_version or opset_import)")
        base = path.parent.resolve()
        own = path.resolve()
        sizes = {own: path.stat().st_size}
        external = external_tensors(model)
        targets = {_location(tensor): _check_external(path, base, tensor, sizes) for tensor in external}
        if check and not check_first:  # before external data is loaded
            if skeleton or (lazy and targets):
                _check_structure(path, model, set(targets))
            else:
                _run_checker(path)
        data_files = tuple(sorted(set(targets.values()) - {own}))
        model_file = cls(model, path, base, data_files, MappingProxyType(sizes), MappingProxyType(targets))
        for tensor in external_tensors(model, main_initializers=not lazy):
            try:
                model_file.load(tensor)  # the span _check_external made explicit, as onnxruntime reads it
            except OSError as exc:
                raise ModelError(f"{path}: cannot load external data ({one_line(exc)})") from None
        return model_file

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file the model reads: its own (``path``, as given) first, then its data files."""
        return (self.path, *self.data_files)

    @property
    def file_bytes(self) -> int:
        """Bytes on disk of the files the model reads, when it was read."""
        return sum(self.sizes.values())

    def locate(self, tensor: onnx.TensorProto) -> tuple[Path, int, int]:
        """``(file, offset, length)`` of ``tensor``'s external data: a file this model was read from,
        its span checked then. A location it did not read is checked now, by the same rules."""
        target = self._targets.get(_location(tensor))
        if target is None:
            target = _check_external(self.path, self.folder, tensor, dict(self.sizes))
        try:
            offset, length = _span(tensor)
        except BnfoldError as exc:
            raise ModelError(f"{self.path}: {exc}") from None
        if length < 0:  # no length and no size from the type (strings): the rest of the file as it was read
            size = self.sizes[target] if target in self.sizes else target.stat().st_size
            length = max(size - offset, 0)
        return target, offset, length

    def _ended_early(self, tensor: onnx.TensorProto) -> ModelError:
        return ModelError(f"{self.path}: tensor '{tensor.name}' has external data past the end of "
                           f"'{_location(tensor)}' (the file is shorter than when it was read)")


@dataclasses.dataclass(frozen=True)
class _Folder(_Source):
    """External data read from a folder: the older spelling of a ModelFile, a lazily read model known
    by its folder only (``write_model(..., base_dir=)``, ``fold(proto, base_dir=)``). Its tensors
    were checked when the model was read (``ModelFile.read``); which files it reads is not known."""

    folder: Path
    proto: onnx.ModelProto | None = None

    def locate(self, tensor: onnx.TensorProto) -> tuple[Path, int, int]:
        target = Path(self.folder, _location(tensor))
        offset, length = _span(tensor)
        if length < 0:  # no length and no size from the type (strings): the rest of the file
            length = max(target.stat().st_size - offset, 0)
        return target, offset, length


def model_source(model: onnx.ModelProto | str | os.PathLike, base_dir: str | os.PathLike | None = None
                 ) -> ModelSource:
    """What ``bnfold.fold`` folds when given a path (the model read with every tensor in memory, as
    ``load_model`` reads it) or a ModelProto with ``base_dir`` (the older spelling of a ModelFile:
    ``read_model(path, lazy=True)``'s model and the folder of ``path``)."""
    if isinstance(model, onnx.ModelProto):
        assert base_dir is not None, "a ModelProto comes with the folder of its file"
        return cast("ModelSource", _Folder(Path(base_dir), model))  # proto given: the ModelSource it needs
    return ModelFile.read(model)


def load_runnable(path: str | os.PathLike) -> onnx.ModelProto:
    """The model at ``path`` with every tensor's data in memory, for handing to a runtime.

    External data is read as onnxruntime reads it: from ``offset`` (default 0), exactly the
    tensor's byte size from its type and shape (a ``length`` given must equal it), inside the
    model's folder. ``onnx.load`` instead reads from the offset to the end of the file when there
    is no ``length``, which makes every tensor but the last of a shared side file too big.
    Validation and latency runs load through here, so they run what onnxruntime would.
    """
    return read_model(path, check=False)[0]


def file_id(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(device, inode)`` of the file ``path`` names, symlinks followed; None when there is none.
    Two paths with one id are one file however they are spelled (symlinks, hard links, case)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def side_file(path: str | os.PathLike) -> Path:
    """Where ``write_model`` puts the external data of a model written to ``path``: ``<path>.data``."""
    path = Path(path)
    return path.with_name(f"{path.name}.data")


def _parse(path: Path) -> onnx.ModelProto:
    try:
        with open(path, "rb") as fh:  # the size known first: a file that keeps growing is read no further
            data = fh.read(os.fstat(fh.fileno()).st_size)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise ModelError(f"{path}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:
        raise ModelError(f"{path}: not an ONNX model (protobuf parse failed: {one_line(exc)})") from None
    return model


def _read_skeleton(path: Path) -> onnx.ModelProto | None:
    """The model without its big initializers' bytes (see ``bnfold.wire``); None when the file
    has none (or is not something the walker understands: the ordinary parse then says why)."""
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            data, turned = wire.skeleton(buf, path.name, LAZY_BYTES)
    except (OSError, ValueError):  # empty file (mmap refuses), unreadable, not protobuf
        return None
    if not turned:
        return None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:
        return None
    return model


def _run_checker(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ModelError(f"{path}: invalid ONNX model ({one_line(exc)})") from None


def _check_structure(path: Path, model: onnx.ModelProto, locations: set[str]) -> None:
    """The ONNX checker on a model whose external data was not loaded.

    The checker wants each external location to be a file beside the model, and does not read
    it: it runs on a copy of the structure in a private folder with an empty file standing for
    each location. ``_check_external`` already checked the real files and the sizes.
    """
    with tempfile.TemporaryDirectory(prefix="bnfold-check-") as tmp:
        for location in locations:
            stand_in = Path(tmp, location)
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.touch()
        name = "model.onnx"
        while name in locations:
            name = "_" + name
        structure = Path(tmp, name)
        structure.write_bytes(model.SerializeToString())
        try:
            onnx.checker.check_model(str(structure))
        except Exception as exc:
            message = one_line(exc).replace(str(structure), str(path)).replace(tmp + os.sep, "")
            raise ModelError(f"{path}: invalid ONNX model ({message})") from None


def tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes of the tensor's data, from its type and shape (None for strings and unknown types)."""
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    n = 1
    for d in tensor.dims:
        n *= d
    if tensor.data_type in _FOUR_BIT:
        return (n + 1) // 2
    try:
        return n * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None


_FOUR_BIT = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}


def _location(tensor: onnx.TensorProto) -> str:
    return next((e.value for e in tensor.external_data if e.key == "location"), "")


def _span(tensor: onnx.TensorProto) -> tuple[int, int]:
    """``(offset, length)`` of an external tensor's data; length -1 when not given.

    Both are decimal digits only, as the ONNX spec writes them: Python's ``int`` would also take
    ``-4``, ``+4``, `` 4`` and ``1_0``, and a negative length would read as "the rest of the file".
    """
    info = {e.key: e.value for e in tensor.external_data}
    span = []
    for key, default in (("offset", 0), ("length", -1)):
        value = info.get(key)
        if value is None:
            span.append(default)
        elif value.isascii() and value.isdigit():
            span.append(int(value))
        else:
            raise ModelError(f"tensor '{tensor.name}' has a malformed external data {key} {value!r} "
                              "(expected a non-negative decimal number)")
    return span[0], span[1]


def external_tensors(model: onnx.ModelProto, main_initializers: bool = True) -> list[onnx.TensorProto]:
    """Tensors (initializers and Constant values, in every subgraph and function) stored in side files
    (without the main graph's initializers if not ``main_initializers``)."""
    found: list[onnx.TensorProto] = []

    def visit(nodes, initializers=()) -> None:
        found.extend(t for t in initializers if t.data_location == onnx.TensorProto.EXTERNAL)
        for node in nodes:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_location == onnx.TensorProto.EXTERNAL:
                    found.append(attr.t)
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                    visit(sub.node, sub.initializer)

    visit(model.graph.node, model.graph.initializer if main_initializers else ())
    for function in model.functions:
        visit(function.node)
    return found


def _check_external(path: Path, base: Path, tensor: onnx.TensorProto, sizes: dict[Path, int]) -> Path:
    """The file holding ``tensor``'s data, checked: inside the model's folder, a regular file, and
    holding as many bytes at the given offset as the tensor's type and shape need. ``sizes``: the
    files' sizes known so far (the target's is added)."""
    target = _check_location(path, base, tensor)
    if not target.is_file():
        raise ModelError(f"{path}: tensor '{tensor.name}' has external data in '{_location(tensor)}', "
                          "which is missing or not a regular file")
    try:
        offset, length = _span(tensor)
    except BnfoldError as exc:
        raise ModelError(f"{path}: {exc}") from None
    expected = tensor_nbytes(tensor)
    if length < 0 and expected is not None:
        length = expected
        entry = tensor.external_data.add()  # make it explicit: readers need no file size
        entry.key, entry.value = "length", str(length)
    if expected is not None and length != expected:
        raise ModelError(f"{path}: tensor '{tensor.name}' has {length} bytes of external data; "
                          f"its type and shape need {expected}")
    size = sizes.get(target)
    if size is None:
        size = sizes[target] = target.stat().st_size
    if offset < 0 or offset + max(length, 0) > size:
        raise ModelError(f"{path}: tensor '{tensor.name}' has external data past the end of '{_location(tensor)}'")
    return target


def _check_location(path: Path, base: Path, tensor: onnx.TensorProto) -> Path:
    """The side file of ``tensor``; refused when outside the model's folder (absolute, ``..``, a symlink out)."""
    location = next((e.value for e in tensor.external_data if e.key == "location"), "")
    if not location:
        raise ModelError(f"{path}: tensor '{tensor.name}' has external data without a location")
    target = (base / location).resolve()
    if target == path.resolve() and location == path.name:
        return target  # the model's own file (a lazily read model), even when the model is a symlink
    if os.path.isabs(location) or ".." in Path(location).parts or not target.is_relative_to(base):
        raise ModelError(
            f"{path}: tensor '{tensor.name}' has external data at '{location}', outside the model's folder; refused"
        )
    return target


def write_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool = False,
                base_dir: str | os.PathLike | None = None, source: ModelFile | None = None) -> int:
    """Serialize ``model`` to ``path``, flushed to disk; returns the bytes written (side file included).

    With ``external_data``, or when the model would exceed protobuf's 2 GB limit, main-graph
    initializers of 1 KiB or more go to one side file ``<name>.data`` beside it. ``source`` is the
    ModelFile a lazily read model came from (``ModelFile.read(lazy=True)``; or ``base_dir``, the
    folder of its file): initializers still on disk are copied from their files, a piece at a time.
    """
    path = Path(path)
    reader: _Source | None = source
    if reader is None and base_dir is not None:
        reader = _Folder(Path(base_dir))
    to_side_file = external_data or _weight_bytes(model) > PROTOBUF_LIMIT - (64 << 20)
    data_path = side_file(path)
    with contextlib.ExitStack() as stack:
        fh = stack.enter_context(open(path, "wb"))
        data = stack.enter_context(open(data_path, "wb")) if to_side_file else None
        written = _write_streamed(model, fh, reader, data)
        for f in (fh, data):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
        if data is not None:
            written += data.tell()
    if to_side_file and data_path.stat().st_size == 0:
        data_path.unlink()  # nothing was big enough to go there
    return written


def _weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the main graph's tensors, from their shapes (upb's ByteSize() serializes the whole
    model to count, which costs a copy of the weights)."""
    total = sum(tensor_nbytes(t) or 0 for t in model.graph.initializer)
    for node in model.graph.node:
        total += sum(tensor_nbytes(a.t) or 0 for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    return total


def _shell(message, skip):
    """A new message of the same type with every field of ``message`` but those named in ``skip``
    (only the fields kept are copied)."""
    shell = type(message)()
    for descriptor, value in message.ListFields():
        if descriptor.name in skip:
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


#: Side-file output: initializers with at least this many bytes of data go to the side file.
SIDE_FILE_BYTES = 1024

#: Bytes copied at a time from a source file.
COPY_CHUNK = 16 << 20


def _write_streamed(model: onnx.ModelProto, fh, source: _Source | None = None, data=None) -> int:
    """Write ``model`` without ever holding its whole serialization: everything but the graph's
    initializers first, then one initializer at a time, each as another ``graph`` field.

    Protobuf parsers merge repeated occurrences of a message field and append repeated fields in
    order, so the file parses to ``model`` (for an eager model without a side file, re-serialized
    it is byte-identical); peak memory grows by the largest tensor instead of the whole model.
    Initializers whose data is external are copied from their files, as ``source`` finds them.
    ``data``: an open side file for initializers of ``SIDE_FILE_BYTES`` or more.
    """
    try:
        chunks = [_shell(model, ("graph",)).SerializeToString()]
        if model.HasField("graph"):
            chunks.append(wire.field(wire.GRAPH_FIELD, _shell(model.graph, ("initializer",)).SerializeToString()))
    except UnicodeDecodeError:  # a text field that is not UTF-8: copy it as bytes, all at once (rare)
        for tensor in model.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL and source is not None:
                source.load(tensor)
        return fh.write(model.SerializeToString())
    written = 0
    for chunk in chunks:
        written += fh.write(chunk)
    scratch = _Scratch()  # this write's own: concurrent writes never share a buffer
    for tensor in model.graph.initializer:
        written += _write_initializer(tensor, fh, source, data, scratch)
    return written


def _write_initializer(tensor: onnx.TensorProto, fh, source: _Source | None, data, scratch: _Scratch) -> int:
    external = tensor.data_location == onnx.TensorProto.EXTERNAL
    if external:
        source = _loaded_from(tensor, source)
        size = source.locate(tensor)[2]
    else:
        size = len(tensor.raw_data) if tensor.HasField("raw_data") else -1
    if data is not None and size >= SIDE_FILE_BYTES:
        shell = _shell(tensor, ("raw_data", "external_data", "data_location"))
        offset = data.tell()
        _copy_data(tensor, source, data, scratch)
        for key, value in (("location", Path(data.name).name), ("offset", str(offset)), ("length", str(size))):
            entry = shell.external_data.add()
            entry.key, entry.value = key, value
        shell.data_location = onnx.TensorProto.EXTERNAL
        return _write_wrapped(fh, shell.SerializeToString())
    if not external:
        return _write_wrapped(fh, tensor.SerializeToString())
    # Inline, with the bytes copied from the source file: TensorProto fields may come in any order.
    body = _shell(tensor, ("raw_data", "external_data", "data_location")).SerializeToString()
    raw_header = wire.header(wire.RAW_DATA_FIELD, size)
    tensor_size = len(body) + len(raw_header) + size
    initializer_header = wire.header(wire.INITIALIZER_FIELD, tensor_size)
    written = fh.write(wire.header(wire.GRAPH_FIELD, len(initializer_header) + tensor_size)
                       + initializer_header + body + raw_header)
    return written + _loaded_from(tensor, source).copy_data(tensor, fh, scratch)


def _loaded_from(tensor: onnx.TensorProto, source: _Source | None) -> _Source:
    """The source an external tensor's data is read from (ModelError when there is none)."""
    if source is None:
        raise ModelError(f"tensor '{tensor.name}' has external data that was never loaded")
    return source


def _copy_data(tensor: onnx.TensorProto, source: _Source | None, out, scratch: _Scratch) -> int:
    """Write the tensor's data bytes to ``out``: its raw_data, or a chunked copy from its file."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return out.write(tensor.raw_data)
    return _loaded_from(tensor, source).copy_data(tensor, out, scratch)


def _write_wrapped(fh, tensor: bytes) -> int:
    """Write a serialized tensor as ``graph { initializer { tensor } }``, headers apart (no copy of it)."""
    initializer_header = wire.header(wire.INITIALIZER_FIELD, len(tensor))
    graph_header = wire.header(wire.GRAPH_FIELD, len(initializer_header) + len(tensor))
    return fh.write(graph_header + initializer_header) + fh.write(tensor)


class _Scratch:
    """One buffer for the copies of one write, grown as needed (a fresh one per tensor costs a page
    fault per 4 KiB). Never shared between writes: a module-level buffer let concurrent
    ``bnfold.optimize`` calls write each other's weights."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def view(self, size: int) -> memoryview:
        if len(self._buffer) < size:
            self._buffer = bytearray(size)
        return memoryview(self._buffer)


def check_names(src: str | os.PathLike, dest: str | os.PathLike, external_data: bool = False) -> None:
    """``check_fits`` for folding ``src`` into ``dest``: the side file counts when the output gets
    one (``external_data``, or the input has external data; read only when it matters)."""
    check_fits(dest)
    try:
        check_fits(dest, side_file=True)
    except BnfoldError:
        if external_data or _has_external_data(src):
            raise


def _has_external_data(src) -> bool:
    try:
        return bool(ModelFile.read(src, check=False, lazy=True).data_files)
    except BnfoldError:
        return False  # unusable: the fold itself says why
