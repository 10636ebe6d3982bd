"""The package as it is published: ``python -m build`` makes an sdist and, from it, a wheel.

The build runs on a copy of the working tree (tracked and untracked files, minus what .gitignore
excludes: what a fresh clone holds), so it writes nothing into the checkout. Its metadata: name,
the version from ``bnfold.__version__`` (the one place it is written), the SPDX license
expression, ``py.typed``, the ``bnfold`` console script; and setuptools says nothing deprecated.
The build backend comes from PyPI into build's isolated environment (setuptools>=77; a few
seconds with pip's cache). .ci/run then installs the wheel into a fresh virtual environment and
runs README's quick start from it.
"""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import bnfold

REPO = Path(__file__).parents[1]
NAME = f"bnfold-{bnfold.__version__}"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, str]:
    """(the wheel, the sdist, build's output)."""
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    [wheel] = (tmp / "dist").glob("*.whl")
    [sdist] = (tmp / "dist").glob("*.tar.gz")
    return wheel, sdist, done.stdout + done.stderr


def test_build_says_nothing_deprecated(built):
    _, _, output = built
    assert "Deprecat" not in output and "deprecat" not in output, output
    assert "SetuptoolsWarning" not in output, output


def test_wheel_metadata(built):
    wheel, _, _ = built
    assert wheel.name == f"{NAME}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        info = f"{NAME}.dist-info"
        meta = email.message_from_bytes(zf.read(f"{info}/METADATA"))
        record = zf.read(f"{info}/RECORD").decode().splitlines()
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        names = zf.namelist()
    assert (meta["Name"], meta["Version"]) == ("bnfold", bnfold.__version__)
    assert meta["Metadata-Version"] >= "2.4"  # License-Expression needs 2.4 (PEP 639)
    assert meta["License-Expression"] == "MIT"
    assert meta["License"] is None  # the free-text field is gone with the deprecated table
    assert meta.get_all("License-File") == ["LICENSE"]
    assert zf_text(wheel, f"{info}/licenses/LICENSE").startswith("MIT License")
    assert meta["Requires-Python"] == ">=3.11"
    assert "Typing :: Typed" in meta.get_all("Classifier")
    assert any(line.startswith("bnfold/py.typed,") for line in record)
    assert "[console_scripts]\nbnfold = bnfold.cli:main" in entry_points
    sources = {str(p.relative_to(REPO)) for p in (REPO / "bnfold").rglob("*.py")}
    assert sources <= set(names), sorted(sources - set(names))
    assert "bnfold/__main__.py" in names
    assert not [n for n in names if n.startswith("tests/")]


def zf_text(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(name).decode()


def test_sdist_holds_what_the_wheel_is_built_from(built):
    _, sdist, _ = built
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
        pkg_info = email.message_from_bytes(tf.extractfile(f"{NAME}/PKG-INFO").read())
    assert {"pyproject.toml", "README.md", "LICENSE", "bnfold/py.typed", "bnfold/__init__.py", "bnfold/cli.py"} <= names
    assert (pkg_info["Version"], pkg_info["License-Expression"]) == (bnfold.__version__, "MIT")


def test_python_dash_m_bnfold():
    done = subprocess.run([sys.executable, "-m", "bnfold", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(bnfold.__version__)
    usage = subprocess.run([sys.executable, "-m", "bnfold", "nonsense"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2
