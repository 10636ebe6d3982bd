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
    ("[tool.bnfold]\ntolerance = 1\n", "[tool.bnfold]: unknown key 'tolerance' (known: atol, rtol, reference, accept_unproven, disable, ignore)"),
    ('[tool.bnfold]\ndisable = ["conv-bm"]\n', "[tool.bnfold]: 'disable': unknown rule 'conv-bm' (rules: conv-bn, "),
    ('[tool.bnfold]\natol = "1e-4"\n', "[tool.bnfold]: 'atol' must be a number >= 0, not '1e-4'"),
    ("[tool.bnfold]\nrtol = -1\n", "[tool.bnfold]: 'rtol' must be a number >= 0, not -1"),
    ('[tool.bnfold]\nignore = "legacy"\n', "[tool.bnfold]: 'ignore' must be a list of strings, not 'legacy'"),
    ("[tool.bnfold\n", "invalid TOML: "),
    ('tool = "x"\n', "'tool' must be a table, not 'x'"),
    ('[tool]\nbnfold = 3\n', "[tool.bnfold] must be a table, not 3"),
    ("[tool.bnfold]\natol = nan\n", "[tool.bnfold]: 'atol' must be a finite number, not nan"),
    ("[tool.bnfold]\nrtol = inf\n", "[tool.bnfold]: 'rtol' must be a finite number, not inf"),
    ('[tool.bnfold]\nignore = ["ok/**", "[z-a].onnx"]\n',
     "[tool.bnfold]: 'ignore': '[z-a].onnx' is not a valid glob (bad character range z-a in '[z-a].onnx')"),
    ('[tool.bnfold]\nignore = ["![z-a]"]\n', "[tool.bnfold]: 'ignore': '![z-a]' is not a valid glob"),
])
def test_a_wrong_setting_is_one_error_naming_it(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(BnfoldError) as info:
        load_settings(tmp_path)
    assert str(info.value).startswith(f"{path}: {message}")
    assert "\n" not in str(info.value)


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
    ("[a-c].onnx", "b.onnx", True),
    ("[a-c].onnx", "-.onnx", False),
    ("[.]x", "ax", False),  # characters in a class are literal, "." too
    ("[.]x", ".x", True),
    ("[a-].onnx", "-.onnx", True),  # a trailing "-" is a literal
    ("[\\]].onnx", "\\].onnx", True),  # "[\\]" is the class of a backslash, then a literal "]"
    ("[\\]].onnx", "\\.onnx", False),
])
def test_glob_regex(pattern, path, matches):
    assert bool(glob_regex(pattern).fullmatch(path)) is matches


def test_is_ignored_matches_the_file_or_a_folder_relative_to_the_base(tmp_path):
    assert is_ignored(tmp_path / "third_party" / "x" / "m.onnx", [(tmp_path, "third_party")])
    assert not is_ignored(tmp_path / "models" / "m.onnx", [(tmp_path, "third_party")])
    assert not is_ignored(tmp_path / "m.onnx", [(tmp_path / "sub", "*.onnx")])  # outside the base


# -- .gitignore-style re-includes: the last matching pattern decides --------------------------------------


@pytest.mark.parametrize(("patterns", "path", "ignored"), [
    (["models/**", "!models/keep.onnx"], "models/keep.onnx", False),
    (["models/**", "!models/keep.onnx"], "models/drop.onnx", True),
    (["!models/keep.onnx", "models/**"], "models/keep.onnx", True),  # order matters: the last one wins
    (["*.onnx", "!keep/", "keep/x/*.onnx"], "keep/x/m.onnx", True),
    (["*.onnx", "!keep/"], "keep/x/m.onnx", False),  # a re-included folder re-includes what is in it
    (["legacy"], "legacy/!odd.onnx", True),
    (["\\!odd.onnx"], "a/!odd.onnx", True),  # "\\!" starts a literal "!" (as in .gitignore)
    (["\\!odd.onnx"], "a/odd.onnx", False),
    (["!*.onnx"], "m.onnx", False),  # a re-include alone ignores nothing
])
def test_a_negated_pattern_re_includes(tmp_path, patterns, path, ignored):
    assert is_ignored(tmp_path / path, [(tmp_path, p) for p in patterns]) is ignored


def test_re_includes_mix_settings_and_flags_in_order(tmp_path):
    """Settings' patterns come first, ``--ignore`` flags after them: a flag can re-include."""
    settings = [(tmp_path, "third_party/**")]
    flags = [(tmp_path / "third_party", "!vendored.onnx")]
    assert not is_ignored(tmp_path / "third_party" / "vendored.onnx", settings + flags)
    assert is_ignored(tmp_path / "third_party" / "other.onnx", settings + flags)


def test_check_globs_names_the_bad_one():
    bnfold.config.check_globs(["a/**", "!b", "[a-c]"], "--ignore")
    with pytest.raises(BnfoldError, match=r"^--ignore: '\[9-0\]' is not a valid glob \(bad character range 9-0"):
        bnfold.config.check_globs(["ok", "[9-0]"], "--ignore")


@pytest.mark.parametrize("text, message", [
    ('tool = "x"\n', "'tool' must be a table, not 'x'"),
    ('[tool.bnfold]\nignore = ["[z-a]"]\n', "[tool.bnfold]: 'ignore': '[z-a]' is not a valid glob"),
    ("[tool.bnfold]\natol = nan\n", "[tool.bnfold]: 'atol' must be a finite number, not nan"),
])
def test_bnfold_check_with_a_wrong_setting_exits_2_with_one_line(tmp_path, monkeypatch, text, message):
    from click.testing import CliRunner

    from bnfold.cli import cli

    path = write(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["check", "."], prog_name="bnfold")
    assert result.exit_code == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"bnfold: error: {path}: {message}"), line


def test_rule_names_are_those_of_the_rules_in_their_order():
    """Settings and --disable are checked against ``RULE_NAMES`` without importing the rules."""
    from bnfold.rules import DEFAULT_RULES

    assert bnfold.config.RULE_NAMES == tuple(rule.name for rule in DEFAULT_RULES)


def test_an_unknown_rule_name_lists_the_rules(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.bnfold]\ndisable = ["conv-bn", "no-such-rule"]\n')
    with pytest.raises(BnfoldError, match="'disable': unknown rule 'no-such-rule' \\(rules: conv-bn, convtranspose-bn, "):
        load_settings(tmp_path)
