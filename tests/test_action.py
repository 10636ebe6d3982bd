"""The GitHub Action (``action.yml``): its steps run here as Actions runs them.

Actions runs a composite action's ``run:`` steps with ``bash`` in ``GITHUB_WORKSPACE``, the
step's ``env:`` with ``${{ inputs.NAME }}`` replaced by the input's value (or its default),
``GITHUB_ACTION_PATH`` set to the action's folder and ``GITHUB_STEP_SUMMARY`` to a file whose
markdown becomes the job's summary. The test does the same with a temporary workspace and summary
file, skipping actions/setup-python and the install step: bnfold is installed in this environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import builders
import onnx
import pytest
import yaml

import bnfold

REPO = Path(__file__).parents[1]
ACTION = yaml.safe_load((REPO / "action.yml").read_text())
FINDING = "BatchNormalization 'bn' can fold into Conv 'conv' [conv-bn]"
INPUT = re.compile(r"\$\{\{\s*inputs\.([A-Za-z0-9_-]+)\s*\}\}")


def test_action_is_composite_with_its_inputs():
    assert ACTION["runs"]["using"] == "composite"
    inputs = ACTION["inputs"]
    assert {k: v.get("default") for k, v in inputs.items()} == {"paths": ".", "args": "", "version": "",
                                                               "python-version": "3.11"}
    assert all(v["description"] for v in inputs.values())
    setup, install, check = ACTION["runs"]["steps"]
    assert setup["uses"] == "actions/setup-python@v5" and setup["if"] == "inputs.python-version != ''"
    assert setup["with"] == {"python-version": "${{ inputs.python-version }}"}
    for step in (install, check):
        assert step["shell"] == "bash"
        assert "${{" not in step["run"]  # inputs reach the script through env only: no value is pasted into code
        assert step["run"].startswith('"$GITHUB_ACTION_PATH/.github/bnfold-action.sh" ')
    assert install["env"] == {"INPUT_VERSION": "${{ inputs.version }}"}
    assert check["env"] == {"INPUT_PATHS": "${{ inputs.paths }}", "INPUT_ARGS": "${{ inputs.args }}"}


def run_action(workspace: Path, summary: Path, **inputs: str) -> subprocess.CompletedProcess:
    """Every ``run:`` step but the install, as the runner would run it; the last step's result."""
    values = {name: spec.get("default", "") for name, spec in ACTION["inputs"].items()}
    values.update({k.replace("_", "-"): v for k, v in inputs.items()})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "INPUT_", "RUNNER_", "BNFOLD"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", GITHUB_ACTIONS="true",
               GITHUB_ACTION_PATH=str(REPO), GITHUB_WORKSPACE=str(workspace), GITHUB_STEP_SUMMARY=str(summary))
    result = None
    for step in ACTION["runs"]["steps"]:
        if "run" not in step or step["name"] == "Install bnfold":
            continue
        step_env = {**env, **{k: INPUT.sub(lambda m: values[m.group(1)], v) for k, v in step.get("env", {}).items()}}
        result = subprocess.run([step["shell"], "-e", "-c", step["run"]], cwd=workspace, env=step_env,
                                capture_output=True, text=True, timeout=300)
        if result.returncode:
            break
    return result


@pytest.fixture
def workspace(tmp_path) -> Path:
    path = tmp_path / "repo"
    (path / "models").mkdir(parents=True)
    return path


@pytest.fixture
def summary(tmp_path) -> Path:
    path = tmp_path / "step_summary.md"
    path.write_text("earlier step\n")  # what other steps wrote stays
    return path


def test_clean_models_pass_with_a_summary_and_no_annotation(workspace, summary):
    onnx.save(bnfold.fold(builders.conv_bn_model()).model, workspace / "models" / "clean.onnx")

    result = run_action(workspace, summary)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    assert summary.read_text() == "earlier step\n## bnfold check\n\nNothing to fold in 1 file\n"


def test_a_foldable_bn_fails_the_step_with_an_annotation_and_a_table(workspace, summary):
    onnx.save(builders.conv_bn_model(), workspace / "models" / "a.onnx")
    onnx.save(bnfold.fold(builders.conv_bn_model()).model, workspace / "models" / "clean.onnx")

    result = run_action(workspace, summary)

    assert result.returncode == 1, result.stderr
    # found under ".": the annotation names the file by its path from the repository's root
    assert result.stdout == f"::warning file=models/a.onnx,title=bnfold::{FINDING}\n"
    assert summary.read_text() == (
        "earlier step\n## bnfold check\n\n**1 foldable pattern in 1 of 2 files**\n\n### Foldable\n\n"
        "| file | node | can fold into | rule | graph |\n|---|---|---|---|---|\n"
        "| `./models/a.onnx` | BatchNormalization `bn` | Conv `conv` | conv-bn | main |\n")


def test_paths_and_args_are_split_like_shell_words(workspace, summary):
    (workspace / "my models").mkdir()
    onnx.save(builders.conv_bn_model(), workspace / "my models" / "a.onnx")
    onnx.save(builders.conv_bn_model(), workspace / "models" / "b.onnx")
    onnx.save(builders.conv_bn_model(), workspace / "models" / "c.onnx")

    result = run_action(workspace, summary, paths="'my models/a.onnx'\nmodels/*.onnx",
                        args="--ignore 'models/c.*'")

    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [f"::warning file=my models/a.onnx,title=bnfold::{FINDING}",
                                          f"::warning file=models/b.onnx,title=bnfold::{FINDING}"]
    assert run_action(workspace, summary, paths="models", args="--disable conv-bn").returncode == 0


def test_an_unreadable_model_is_an_error_annotation_and_exit_2(workspace, summary):
    (workspace / "models" / "broken.onnx").write_bytes(b"not a model")

    result = run_action(workspace, summary, paths="models")

    assert result.returncode == 2
    assert result.stdout.startswith("::error file=models/broken.onnx,title=bnfold::"
                                    "models/broken.onnx: not an ONNX model")
    assert "| `models/broken.onnx` | models/broken.onnx: not an ONNX model" in summary.read_text()
    assert result.stderr.count("bnfold: error: ") == 1  # once, from the run that annotates


@pytest.mark.parametrize("args", ["--fix", "--format text", "--json", "-v --format=json"])
def test_args_that_would_change_what_the_action_does_are_refused(workspace, summary, args):
    onnx.save(builders.conv_bn_model(), workspace / "models" / "a.onnx")
    before = (workspace / "models" / "a.onnx").read_bytes()

    result = run_action(workspace, summary, args=args)

    assert result.returncode == 2
    assert "is not for this action" in result.stderr
    assert (workspace / "models" / "a.onnx").read_bytes() == before
    assert summary.read_text() == "earlier step\n"


def test_an_unclosed_quote_is_an_error(workspace, summary):
    result = run_action(workspace, summary, paths="'models")
    assert result.returncode == 2
    assert result.stderr == "bnfold-action: error: the paths input is not a list of shell words (an unclosed quote?)\n"


def test_without_a_summary_file_only_annotations(workspace, tmp_path):
    """Run by hand (no GITHUB_STEP_SUMMARY): the annotations and the exit code alone."""
    onnx.save(builders.conv_bn_model(), workspace / "models" / "a.onnx")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "INPUT_", "BNFOLD"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", INPUT_PATHS="models")
    result = subprocess.run(["bash", str(REPO / ".github" / "bnfold-action.sh"), "check"], cwd=workspace, env=env,
                            capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stdout) == (1, f"::warning file=models/a.onnx,title=bnfold::{FINDING}\n")
