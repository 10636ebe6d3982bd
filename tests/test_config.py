"""``bnfold.config``: reading ``[tool.bnfold]`` from the nearest pyproject.toml, and ignore globs."""

from __future__ import annotations

from pathlib import Path

import pytest

import bnfold.config
from bnfold.config import Settings, glob_regex, is_ignored, load_settings
from bnfold.errors import BnfoldError


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pyproject.toml"
    path.write_text(text)
    return path


def test_every_key(tmp_path):
    write(tmp_path, '[tool.bnfold]\natol = 1e-5\nrtol = 0\ndisable = ["bn-linear", "bn-scale"]\nignore = ["legacy/**"]\n')
    assert load_settings(tmp_path) == Settings(
        atol=1e-5, rtol=0.0, disable=("bn-linear", "bn-scale"), ignore=("legacy/**",), root=tmp_path,
    )


def test_found_by_walking_up(tmp_path):
    write(tmp_path, "[tool.bnfold]\natol = 0.5\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    settings = load_settings(deep)
    assert settings.atol == 0.5 and settings.root == tmp_path


def test_the_nearest_pyproject_wins_even_without_the_table(tmp_path):
    write(tmp_path, "[tool.bnfold]\natol = 0.5\n")
    write(tmp_path / "sub", "[project]\nname = 'x'\n")
    assert load_settings(tmp_path / "sub") == Settings(root=tmp_path / "sub")


def test_no_pyproject_means_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(bnfold.config, "find_pyproject", lambda start: None)
    assert load_settings(tmp_path) == Settings()


@pytest.mark.parametrize(("text", "message"), [
    ("[tool.bnfold]\ntolerance = 1\n", "[tool.bnfold]: unknown key 'tolerance' (known: atol, rtol, disable, ignore)"),
    ('[tool.bnfold]\ndisable = ["conv-bm"]\n', "[tool.bnfold]: 'disable': unknown rule 'conv-bm' (rules: conv-bn, "),
    ('[tool.bnfold]\natol = "1e-4"\n', "[tool.bnfold]: 'atol' must be a number >= 0, not '1e-4'"),
    ("[tool.bnfold]\nrtol = -1\n", "[tool.bnfold]: 'rtol' must be a number >= 0, not -1"),
    ('[tool.bnfold]\nignore = "legacy"\n', "[tool.bnfold]: 'ignore' must be a list of strings, not 'legacy'"),
    ("[tool.bnfold\n", "invalid TOML: "),
])
def test_a_wrong_setting_is_one_error_naming_it(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(BnfoldError) as info:
        load_settings(tmp_path)
    assert str(info.value).startswith(f"{path}: {message}")
    assert "\n" not in str(info.value)


def test_without_a_toml_parser_settings_are_not_read_and_a_warning_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(bnfold.config, "_toml", None)
    path = write(tmp_path, "[tool.bnfold]\nunknown = 1\n")
    settings = load_settings(tmp_path)
    assert (settings.atol, settings.disable, settings.ignore) == (None, (), ())
    assert settings.warning == f"{path}: [tool.bnfold] not read: Python < 3.11 needs the 'tomli' package to read TOML"
    write(tmp_path, "[project]\nname = 'x'\n")
    assert load_settings(tmp_path).warning is None


@pytest.mark.parametrize(("pattern", "path", "matches"), [
    ("*.quant.onnx", "a/b/m.quant.onnx", True),
    ("*.quant.onnx", "a/b/m.onnx", False),
    ("legacy", "models/legacy", True),
    ("legacy/", "legacy", True),
    ("models/old/**", "models/old/a/b.onnx", True),
    ("models/*.onnx", "models/a/b.onnx", False),
    ("models/**/*.onnx", "models/b.onnx", True),
    ("/top.onnx", "top.onnx", True),
    ("/top.onnx", "a/top.onnx", False),
    ("m?.onnx", "m1.onnx", True),
    ("[!ab].onnx", "a.onnx", False),
])
def test_glob_regex(pattern, path, matches):
    assert bool(glob_regex(pattern).fullmatch(path)) is matches


def test_is_ignored_matches_the_file_or_a_folder_relative_to_the_base(tmp_path):
    assert is_ignored(tmp_path / "third_party" / "x" / "m.onnx", [(tmp_path, "third_party")])
    assert not is_ignored(tmp_path / "models" / "m.onnx", [(tmp_path, "third_party")])
    assert not is_ignored(tmp_path / "m.onnx", [(tmp_path / "sub", "*.onnx")])  # outside the base
