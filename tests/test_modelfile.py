"""``bnfold.io.ModelFile``: a model read from its file, the files it reads, and the reader of its tensors.

The ModelFile is what the I/O layer hands on: the proto (lazily, its structure only), the path it
came from, the external data files it reads with their sizes, and ``read_tensor``, the reader the
engine is handed (``bnfold.constants.TensorReader``): exactly a tensor's declared span, from a file
inside the model's folder, never more. The engine reads weights through it and never opens a file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import conv_bn_model
from conftest import op_types
from onnx import numpy_helper

import bnfold
from bnfold.errors import BnfoldError
from bnfold.folding import ModelSource
from bnfold.io import ModelFile, write_model


def weight(model: onnx.ModelProto, name: str = "W") -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def set_span(tensor: onnx.TensorProto, location: str, offset: int, length: int | None) -> None:
    """Turn ``tensor`` into a reference to ``location`` at ``offset`` (with ``length`` unless None)."""
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    span = [("location", location), ("offset", str(offset))] + ([] if length is None else [("length", str(length))])
    for key, value in span:
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def with_side_file(folder: Path, location: str = "w.bin", junk: int = 0,
                   length: bool = True) -> tuple[Path, np.ndarray]:
    """conv_bn_model in ``folder``/m.onnx with W in the side file ``location``, after 8 bytes of
    junk and followed by ``junk`` more; returns the model's path and W's values."""
    model = conv_bn_model(c_in=8, c_out=16, kernel=3)
    w = weight(model)
    values = numpy_helper.to_array(w)
    target = folder / location
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"\x7f" * 8 + w.raw_data + b"\x7f" * junk)
    set_span(w, location, 8, len(w.raw_data) if length else None)
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path, values


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


# -- the files a model reads --------------------------------------------------------------------

@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_a_model_without_external_data_reads_its_own_file_only(tmp_path, lazy):
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(c_in=16, c_out=32, kernel=3), path)

    model = ModelFile.read(path, lazy=lazy)

    assert model.path == path and model.folder == tmp_path.resolve()
    assert model.data_files == ()  # lazily read, W refers to the model's own file: not a side file
    assert model.files == (path,)
    assert dict(model.sizes) == {path.resolve(): path.stat().st_size}
    assert model.file_bytes == path.stat().st_size
    assert (weight(model.proto).data_location == onnx.TensorProto.EXTERNAL) == lazy


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_a_model_with_a_side_file_lists_it_with_its_size(tmp_path, lazy):
    path, _ = with_side_file(tmp_path, "data/w.bin", junk=12)

    model = ModelFile.read(path, lazy=lazy)

    side = (tmp_path / "data" / "w.bin").resolve()
    assert model.data_files == (side,)
    assert model.files == (path, side)
    assert dict(model.sizes) == {path.resolve(): path.stat().st_size, side: 8 + 4608 + 12}
    assert model.file_bytes == path.stat().st_size + side.stat().st_size


def test_a_symlinked_data_file_is_listed_as_the_file_it_names(tmp_path):
    path, values = with_side_file(tmp_path, "store/real.bin")
    model = onnx.load(path, load_external_data=False)
    weight(model).external_data[0].value = "link.bin"
    path.write_bytes(model.SerializeToString())
    (tmp_path / "link.bin").symlink_to(tmp_path / "store" / "real.bin")

    read = ModelFile.read(path, lazy=True)

    assert read.data_files == ((tmp_path / "store" / "real.bin").resolve(),)
    np.testing.assert_array_equal(read.read_tensor(weight(read.proto)), values)


def test_the_overwrite_guard_knows_the_files_from_the_model_file(tmp_path, monkeypatch):
    """optimize asks the ModelFile which files the input reads (none are looked up again)."""
    path, _ = with_side_file(tmp_path, "w.bin")
    (tmp_path / "alias.bin").symlink_to(tmp_path / "w.bin")
    asked = []
    files = ModelFile.files
    monkeypatch.setattr(ModelFile, "files", property(lambda self: asked.append(self.path) or files.fget(self)))

    with pytest.raises(BnfoldError) as raised:
        bnfold.optimize(path, tmp_path / "alias.bin")

    assert asked == [path]
    assert one_line(raised.value) == (f"{tmp_path / 'alias.bin'}: the output would overwrite external data of the "
                                      f"input {path}; pass --in-place to replace the input, or choose another output")


# -- locations and spans --------------------------------------------------------------------------

@pytest.mark.parametrize("location", ["../outside.bin", "link/out.bin"])
def test_a_location_escaping_the_folder_is_refused(tmp_path, location):
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (inner / "link").symlink_to(tmp_path / "elsewhere")
    path, _ = with_side_file(inner, "w.bin")
    model = onnx.load(path, load_external_data=False)
    weight(model).external_data[0].value = location
    path.write_bytes(model.SerializeToString())
    os.replace(inner / "w.bin", (inner / location).resolve())  # the bytes exist where it points

    with pytest.raises(BnfoldError) as raised:
        ModelFile.read(path, lazy=True)

    assert one_line(raised.value) == (f"{path}: tensor 'W' has external data at '{location}', outside the model's "
                                      "folder; refused")


def test_a_tensor_the_model_did_not_read_is_checked_as_if_it_had(tmp_path):
    """read_tensor on a reference the read never saw (one made afterwards) applies the same checks."""
    path, values = with_side_file(tmp_path / "inner", "w.bin")
    (tmp_path / "outside.bin").write_bytes((tmp_path / "inner" / "w.bin").read_bytes())
    model = ModelFile.read(path, lazy=True)
    stray = onnx.TensorProto()
    stray.CopyFrom(weight(model.proto))
    stray.external_data[0].value = "../outside.bin"

    with pytest.raises(BnfoldError, match="outside the model's folder; refused"):
        model.read_tensor(stray)
    stray.external_data[0].value = "w.bin"
    np.testing.assert_array_equal(model.read_tensor(stray), values)


@pytest.mark.parametrize("length", [True, False], ids=["length", "no-length"])
def test_a_tensor_read_is_bounded_by_its_declared_size(tmp_path, length):
    """The side file holds junk before and after W's bytes: exactly the span is read."""
    path, values = with_side_file(tmp_path, "w.bin", junk=4096, length=length)

    model = ModelFile.read(path, lazy=True)
    w = weight(model.proto)

    assert model.locate(w) == ((tmp_path / "w.bin").resolve(), 8, values.nbytes)
    assert len(model.read_bytes(w)) == values.nbytes
    read = model.read_tensor(w)
    assert read.dtype == values.dtype and read.shape == values.shape
    np.testing.assert_array_equal(read, values)


def test_a_truncated_data_file_is_refused_with_one_line(tmp_path):
    path, _ = with_side_file(tmp_path, "w.bin")
    with open(tmp_path / "w.bin", "r+b") as fh:
        fh.truncate(8 + 4608 - 1)

    with pytest.raises(BnfoldError) as raised:
        ModelFile.read(path, lazy=True)

    assert one_line(raised.value) == f"{path}: tensor 'W' has external data past the end of 'w.bin'"


def test_a_data_file_truncated_after_the_read_is_refused_with_one_line(tmp_path):
    """Shorter by the time a fold reads the weight (or the writer copies it): an error, never short values."""
    path, _ = with_side_file(tmp_path, "w.bin")
    model = ModelFile.read(path, lazy=True)
    with open(tmp_path / "w.bin", "r+b") as fh:
        fh.truncate(100)
    expected = (f"{path}: tensor 'W' has external data past the end of 'w.bin' "
                "(the file is shorter than when it was read)")

    with pytest.raises(BnfoldError) as raised:
        model.read_tensor(weight(model.proto))
    assert one_line(raised.value) == expected
    with pytest.raises(BnfoldError) as raised:
        write_model(model.proto, tmp_path / "copy.onnx", source=model)
    assert one_line(raised.value) == expected


def test_the_model_file_is_frozen(tmp_path):
    path, _ = with_side_file(tmp_path, "w.bin")
    model = ModelFile.read(path, lazy=True)

    with pytest.raises(dataclasses.FrozenInstanceError):
        model.path = tmp_path / "other.onnx"
    with pytest.raises(TypeError):
        model.sizes[path.resolve()] = 0


# -- the engine reads through what it is handed ----------------------------------------------------

class InMemory:
    """A ModelSource whose references name a file that does not exist: values come from a dict."""

    def __init__(self, proto: onnx.ModelProto, values: dict[str, np.ndarray]):
        self.proto, self.values, self.asked = proto, values, []

    def read_tensor(self, tensor: onnx.TensorProto) -> np.ndarray:
        self.asked.append(tensor.name)
        return self.values[tensor.name]


def test_fold_reads_weights_only_through_the_reader_it_is_handed(tmp_path):
    model = conv_bn_model(c_in=8, c_out=16, kernel=3)
    values = numpy_helper.to_array(weight(model))
    set_span(weight(model), "nowhere.bin", 0, values.nbytes)
    source = InMemory(model, {"W": values})
    assert isinstance(source, ModelSource) and isinstance(ModelFile.read(with_side_file(tmp_path)[0]), ModelSource)

    result = bnfold.fold(source, in_place=True)

    assert source.asked == ["W"] and result.model is model
    assert op_types(result.model) == ["Conv"]
    expected = bnfold.fold(conv_bn_model(c_in=8, c_out=16, kernel=3)).model
    np.testing.assert_array_equal(numpy_helper.to_array(weight(result.model)), numpy_helper.to_array(weight(expected)))


def test_fold_of_a_model_file_gives_what_the_eager_fold_gives(tmp_path):
    path, _ = with_side_file(tmp_path, "w.bin")
    model = ModelFile.read(path, lazy=True)

    result = bnfold.fold(model, in_place=True)
    out = tmp_path / "out.onnx"
    write_model(result.model, out, source=model)

    assert onnx.load(out) == bnfold.fold(str(path)).model
    with pytest.raises(BnfoldError, match="not both"):
        bnfold.fold(model, base_dir=tmp_path)


def test_the_engine_imports_nothing_that_reads_files():
    """folding, graph, constants, passes and rules import nothing from io, pipeline, check, cli or
    the public front (api, irpass) — at the top, in a function or for type checkers: a path and
    an onnx_ir.Model are turned into a ModelProto / ModelSource by ``bnfold.api`` before the engine."""
    import ast

    root = Path(bnfold.__file__).parent
    engine = [root / f"{name}.py" for name in ("folding", "graph", "constants", "passes")] + sorted(
        (root / "rules").glob("*.py"))
    arrows = []
    for path in engine:
        package = ["bnfold"] + list(path.relative_to(root).parent.parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                target = ".".join(base + (node.module.split(".") if node.module else []))
                for alias in node.names:
                    full = f"{target}.{alias.name}" if not node.module else target
                    arrows.append((path.stem, full, alias.name))
            elif isinstance(node, ast.Import):
                arrows.extend((path.stem, alias.name, alias.name) for alias in node.names)
    assert len(arrows) > 20  # the walk saw the engine's imports
    front = ("bnfold.io", "bnfold.pipeline", "bnfold.check", "bnfold.cli", "bnfold.api", "bnfold.irpass")
    reaching = [a for a in arrows if a[1] in front or a[1].startswith(tuple(f + "." for f in front))]
    assert reaching == []
