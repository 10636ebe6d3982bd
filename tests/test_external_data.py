"""Models whose tensors live in side files (ONNX external data)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
import pytest
from builders import conv_bn_model
from click.testing import CliRunner
from conftest import assert_equivalent, op_types

from bnfold.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="bnfold")


def folder_state(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def save_external(model: onnx.ModelProto, path: Path, location: str) -> None:
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=0)


@pytest.fixture
def external_model(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    save_external(conv_bn_model(c_in=8, c_out=16), path, "model.weights")
    return path


def test_external_data_in_external_data_out(external_model, tmp_path):
    before = folder_state(tmp_path)
    result = run("optimize", external_model, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    out = tmp_path / "model.folded.onnx"
    data = tmp_path / "model.folded.onnx.data"
    assert out.exists() and data.exists()
    # the input and its side file are untouched; the output's weights live in its own side file
    assert {k: v for k, v in folder_state(tmp_path).items() if k in before} == before
    raw = onnx.load(out, load_external_data=False)
    locations = {e.value for t in raw.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.folded.onnx.data"}
    onnx.checker.check_model(str(out), full_check=True)
    folded = onnx.load(out)
    assert op_types(folded) == ["Conv"]
    assert_equivalent(onnx.load(external_model), folded)


def test_external_data_flag_on_a_plain_model(tmp_path):
    src = tmp_path / "plain.onnx"
    onnx.save(conv_bn_model(c_in=16, c_out=32), src)
    result = run("optimize", src, "-o", tmp_path / "out.onnx", "--external-data")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert (tmp_path / "out.onnx.data").stat().st_size > 0
    assert_equivalent(onnx.load(src), onnx.load(tmp_path / "out.onnx"))


def test_in_place_with_external_data(external_model, tmp_path):
    original = onnx.load(external_model)
    result = run("optimize", external_model, "--in-place")
    assert result.exit_code == 0, result.stdout + result.stderr
    folded = onnx.load(external_model)
    assert op_types(folded) == ["Conv"]
    assert_equivalent(original, folded)


@pytest.mark.parametrize("location", ["../outside.weights", "/tmp/bnfold-absolute.weights", "link/out.weights"])
def test_location_outside_the_models_folder_is_refused(tmp_path, location):
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (inner / "link").symlink_to(tmp_path / "elsewhere")
    model = conv_bn_model()
    path = inner / "model.onnx"
    save_external(model, tmp_path / "staging.onnx", "data.bin")  # real data, then point at it
    raw = onnx.load(tmp_path / "staging.onnx", load_external_data=False)
    for tensor in raw.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(raw, path)
    target = Path(location) if location.startswith("/") else inner / location
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes((tmp_path / "data.bin").read_bytes())
    before = folder_state(tmp_path)

    result = run("optimize", path)

    assert result.exit_code == 2
    assert result.stderr.startswith("bnfold: error: ") and len(result.stderr.splitlines()) == 1
    assert "outside the model's folder" in result.stderr
    assert folder_state(tmp_path) == before
    if location.startswith("/"):
        target.unlink()


def test_failed_validation_leaves_no_side_file(external_model, tmp_path):
    before = folder_state(tmp_path)
    result = run("optimize", external_model, "--atol", "0", "--rtol", "0")
    assert result.exit_code == 1
    assert folder_state(tmp_path) == before
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
