"""The pre-commit hooks of ``.pre-commit-hooks.yaml``, run by the real ``pre-commit`` tool.

A throwaway git repository holds a model with an unfolded BN and a ``.pre-commit-config.yaml``
that uses this repository's hooks: ``git commit`` is refused with the node named, the
``bnfold-fix`` hook folds the model, and the commit then goes through.

Why not ``pre-commit try-repo``: on a repository with uncommitted changes it commits a shadow
copy made with ``git add -u``, which leaves out files git does not track yet (a new module, the
hooks file itself), and it builds a fresh hook environment on every call. Instead the test
commits a snapshot of this repository's working tree (tracked and untracked files, minus what
.gitignore excludes) and points ``repo:``/``rev:`` at that commit: the same thing try-repo means
to do, complete, and exactly the config a user writes. One environment is built (pip installs
bnfold and its dependencies from PyPI), so the test takes a minute or two. Everything pre-commit
and git write lives under ``tmp_path`` (PRE_COMMIT_HOME, git's global config).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import builders
import onnx

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


def test_commit_with_unfolded_bn_fails_naming_the_node_and_passes_after_bnfold_fix(tmp_path):
    env = isolated_env(tmp_path)
    hooks_repo, rev = snapshot(tmp_path, env)
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
    onnx.save(builders.conv_bn_model(), project / "model.onnx")
    pre_commit = [sys.executable, "-m", "pre_commit"]
    installed = run(*pre_commit, "install", cwd=project, env=env)
    assert installed.returncode == 0, installed.stdout
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
