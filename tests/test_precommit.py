"""The pre-commit hooks of ``.pre-commit-hooks.yaml``, run by the real ``pre-commit`` tool.

A throwaway git repository holds a model with an unfolded BN and a ``.pre-commit-config.yaml``
that uses this repository's hooks: ``git commit`` is refused with the node named, the
``bnfold-fix`` hook folds the model, and the commit then goes through.

Why not ``pre-commit try-repo``: on a repository with uncommitted changes it commits a shadow
copy made with ``git add -u``, which leaves out files git does not track yet (a new module, the
hooks file itself), and it builds a fresh hook environment on every call. Instead the test
commits a snapshot of this repository's working tree (tracked and untracked files, minus what
.gitignore excludes) and points ``repo:``/``rev:`` at that commit: the same thing try-repo means
to do, complete, and exactly the config a user writes. One environment is built for the module
(pip installs bnfold and its dependencies from PyPI), so the first test takes a minute or two.
Everything pre-commit and git write lives under pytest's temporary folders (PRE_COMMIT_HOME, git's
global config).

pre-commit appends the staged file names to the hook's entry: a file named ``--ignore=*.onnx``
must not turn the gate off, nor ``-o.onnx`` make it fail without its findings. The entries end
option parsing with ``--``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import builders
import onnx
import pytest

REPO = Path(__file__).parents[1]
TIMEOUT = 600
FINDING = "model.onnx: BatchNormalization 'bn' can fold into Conv 'conv' [conv-bn]"


def git(*args, cwd: Path, env: dict) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True,
                          timeout=TIMEOUT).stdout


def run(*args, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """Run a command; its output (stdout and stderr together) in ``.stdout``."""
    return subprocess.run(args, check=False, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=TIMEOUT)


def isolated_env(tmp_path: Path) -> dict:
    """No GIT_* variable from outside (the suite may run inside a git hook), no user git config."""
    config = tmp_path / "gitconfig"
    config.write_text("[user]\n\tname = bnfold tests\n\temail = tests@bnfold.invalid\n"
                      "[commit]\n\tgpgsign = false\n[init]\n\tdefaultBranch = main\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "PRE_COMMIT"))}
    env.update(GIT_CONFIG_GLOBAL=str(config), GIT_CONFIG_NOSYSTEM="1", PRE_COMMIT_HOME=str(tmp_path / "pre-commit-home"))
    return env


def snapshot(tmp_path: Path, env: dict) -> tuple[Path, str]:
    """This repository's working tree committed in a new repository: (its path, the commit)."""
    dest = tmp_path / "bnfold-snapshot"
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO, env=env)
    for name in filter(None, listed.split("\0")):
        src = REPO / name
        if src.is_file():  # a tracked file deleted in the working tree is left out
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    git("init", "-q", cwd=dest, env=env)
    git("add", "-A", cwd=dest, env=env)
    git("commit", "-q", "-m", "snapshot", cwd=dest, env=env)
    return dest, git("rev-parse", "HEAD", cwd=dest, env=env).strip()


PRE_COMMIT = [sys.executable, "-m", "pre_commit"]


@pytest.fixture(scope="module")
def hooks(tmp_path_factory) -> tuple[Path, str, dict]:
    """This repository as a hooks repository: (its path, the commit, the environment to run in).
    PRE_COMMIT_HOME is shared by the module's tests, so pre-commit builds the hook environment once."""
    tmp = tmp_path_factory.mktemp("hooks")
    env = isolated_env(tmp)
    hooks_repo, rev = snapshot(tmp, env)
    return hooks_repo, rev, env


def new_project(tmp_path: Path, hooks) -> tuple[Path, dict]:
    """A git repository whose .pre-commit-config.yaml uses bnfold-check (and bnfold-fix, manual stage)."""
    hooks_repo, rev, env = hooks
    project = tmp_path / "project"
    project.mkdir()
    git("init", "-q", cwd=project, env=env)
    (project / ".pre-commit-config.yaml").write_text(
        "repos:\n"
        f"  - repo: {hooks_repo}\n"
        f"    rev: {rev}\n"
        "    hooks:\n"
        "      - id: bnfold-check\n"
        "      - id: bnfold-fix\n"
        "        stages: [manual]\n"
    )
    installed = run(*PRE_COMMIT, "install", cwd=project, env=env)
    assert installed.returncode == 0, installed.stdout
    return project, env


def test_commit_with_unfolded_bn_fails_naming_the_node_and_passes_after_bnfold_fix(tmp_path, hooks):
    project, env = new_project(tmp_path, hooks)
    onnx.save(builders.conv_bn_model(), project / "model.onnx")
    pre_commit = PRE_COMMIT
    git("add", ".pre-commit-config.yaml", "model.onnx", cwd=project, env=env)

    refused = run("git", "commit", "-m", "add model", cwd=project, env=env)
    assert refused.returncode != 0, refused.stdout
    assert "- hook id: bnfold-check" in refused.stdout, refused.stdout
    assert FINDING in refused.stdout.splitlines(), refused.stdout
    assert run("git", "rev-parse", "--verify", "HEAD", cwd=project, env=env).returncode != 0  # nothing committed

    fixed = run(*pre_commit, "run", "bnfold-fix", "--hook-stage", "manual", "--files", "model.onnx",
                cwd=project, env=env)
    assert fixed.returncode == 1, fixed.stdout  # pre-commit fails a hook that modified files
    assert "- files were modified by this hook" in fixed.stdout, fixed.stdout
    assert "model.onnx: folded 1 (BatchNormalization 'bn' into Conv 'conv')" in fixed.stdout, fixed.stdout
    assert [n.op_type for n in onnx.load(project / "model.onnx").graph.node] == ["Conv"]

    git("add", "model.onnx", cwd=project, env=env)
    committed = run("git", "commit", "-m", "add folded model", cwd=project, env=env)
    assert committed.returncode == 0, committed.stdout
    assert any(line.startswith("bnfold check") and line.endswith("Passed") for line in committed.stdout.splitlines()), \
        committed.stdout
    assert git("log", "--format=%s", cwd=project, env=env).splitlines() == ["add folded model"]


@pytest.mark.parametrize("name", ["--ignore=*.onnx", "-o.onnx", "--fix.onnx", "--debug.onnx"])
def test_a_staged_file_named_like_an_option_is_checked_as_a_file(tmp_path, hooks, name):
    """The option-shaped file and a plain one both hold a foldable BN: both findings, the commit refused."""
    project, env = new_project(tmp_path, hooks)
    onnx.save(builders.conv_bn_model(), project / name)
    onnx.save(builders.conv_bn_model(seed=1), project / "plain.onnx")
    git("add", "--", ".pre-commit-config.yaml", name, "plain.onnx", cwd=project, env=env)

    refused = run("git", "commit", "-m", "add models", cwd=project, env=env)
    assert refused.returncode != 0, refused.stdout
    lines = refused.stdout.splitlines()
    assert f"{name}: BatchNormalization 'bn' can fold into Conv 'conv' [conv-bn]" in lines, refused.stdout
    assert "plain.onnx: BatchNormalization 'bn' can fold into Conv 'conv' [conv-bn]" in lines, refused.stdout
    assert "No such option" not in refused.stdout
    assert run("git", "rev-parse", "--verify", "HEAD", cwd=project, env=env).returncode != 0  # nothing committed

    # --all-files: pre-commit's own argument parser takes --files --ignore=*.onnx as its option
    fixed = run(*PRE_COMMIT, "run", "bnfold-fix", "--hook-stage", "manual", "--all-files", cwd=project, env=env)
    assert f"{name}: folded 1 (BatchNormalization 'bn' into Conv 'conv')" in fixed.stdout, fixed.stdout
    assert [n.op_type for n in onnx.load(project / name).graph.node] == ["Conv"]
