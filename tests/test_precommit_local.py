"""pre-commit without a published repository: ``repo: local`` hooks with ``language: system``.

The hooks run the bnfold installed where the commit runs (here: this environment's, put first on
PATH), so pre-commit builds no environment and needs no network. The config is README's
("pre-commit", ``repo: local``); a throwaway git repository and the real ``pre-commit`` tool, as
in tests/test_precommit.py (whose helpers keep git and pre-commit inside pytest's folders).

Not tested here: the ``language: python`` variant with ``additional_dependencies``. pre-commit
then makes a virtual environment and pip installs bnfold and its dependencies (onnx,
onnxruntime, ...) from PyPI, a minute or more; tests/test_precommit.py covers that path with
this repository's own hooks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import builders
import onnx
from test_precommit import PRE_COMMIT, git, isolated_env, run

#: README's ``repo: local`` config, system variant (keep the two identical).
LOCAL_CONFIG = """\
repos:
  - repo: local
    hooks:
      - id: bnfold-check
        name: bnfold check
        entry: bnfold check --
        language: system
        files: \\.onnx$
        types: [file]
      - id: bnfold-fix
        name: bnfold check --fix
        entry: bnfold check --fix --
        language: system
        files: \\.onnx$
        types: [file]
        stages: [manual]
"""
FINDING = "model.onnx: BatchNormalization 'bn' can fold into Conv 'conv' [conv-bn]"


def project(tmp_path: Path) -> tuple[Path, dict]:
    env = isolated_env(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the installed bnfold
    path = tmp_path / "project"
    path.mkdir()
    git("init", "-q", cwd=path, env=env)
    (path / ".pre-commit-config.yaml").write_text(LOCAL_CONFIG)
    installed = run(*PRE_COMMIT, "install", cwd=path, env=env)
    assert installed.returncode == 0, installed.stdout
    return path, env


def test_local_system_hook_refuses_a_foldable_bn_and_fix_folds_it(tmp_path):
    path, env = project(tmp_path)
    onnx.save(builders.conv_bn_model(), path / "model.onnx")
    git("add", ".pre-commit-config.yaml", "model.onnx", cwd=path, env=env)

    refused = run("git", "commit", "-m", "add model", cwd=path, env=env)
    assert refused.returncode != 0, refused.stdout
    assert "- hook id: bnfold-check" in refused.stdout, refused.stdout
    assert FINDING in refused.stdout.splitlines(), refused.stdout
    assert run("git", "rev-parse", "--verify", "HEAD", cwd=path, env=env).returncode != 0  # nothing committed

    fixed = run(*PRE_COMMIT, "run", "bnfold-fix", "--hook-stage", "manual", "--files", "model.onnx", cwd=path, env=env)
    assert fixed.returncode == 1, fixed.stdout  # pre-commit fails a hook that modified files
    assert "model.onnx: folded 1 (BatchNormalization 'bn' into Conv 'conv')" in fixed.stdout, fixed.stdout
    assert [n.op_type for n in onnx.load(path / "model.onnx").graph.node] == ["Conv"]

    git("add", "model.onnx", cwd=path, env=env)
    committed = run("git", "commit", "-m", "add folded model", cwd=path, env=env)
    assert committed.returncode == 0, committed.stdout
    assert any(line.startswith("bnfold check") and line.endswith("Passed") for line in committed.stdout.splitlines())


def test_local_hook_reads_an_option_shaped_file_name_as_a_file(tmp_path):
    path, env = project(tmp_path)
    onnx.save(builders.conv_bn_model(), path / "--ignore=*.onnx")
    git("add", "--", ".pre-commit-config.yaml", "--ignore=*.onnx", cwd=path, env=env)

    refused = run("git", "commit", "-m", "add model", cwd=path, env=env)
    assert refused.returncode != 0, refused.stdout
    assert "--ignore=*.onnx: BatchNormalization 'bn' can fold into Conv 'conv' [conv-bn]" in refused.stdout.splitlines()
