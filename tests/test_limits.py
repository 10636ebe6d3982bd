"""bnfold.limits.usable_memory: physical memory, or a control group's smaller limit (a container's
``--memory``, a CI job's), so that the bounds on inputs and on the exact reference hold where the
kernel would otherwise kill the process."""

from __future__ import annotations

import os

import pytest

import bnfold
from bnfold import inputs, limits


def cgroup_tree(tmp_path, proc: str, files: dict[str, str]):
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "proc").write_text(proc)
    return str(root), str(tmp_path / "proc")


@pytest.mark.parametrize("proc, files, expected", [
    ("0::/a/b\n", {"a/b/memory.max": "max\n", "a/memory.max": "1073741824\n", "memory.max": "max\n"}, 1 << 30),
    ("0::/a/b\n", {"a/b/memory.max": "536870912\n", "a/memory.max": "1073741824\n"}, 512 << 20),
    ("0::/\n", {"memory.max": "max\n"}, None),
    ("12:cpu,cpuacct:/x\n5:memory:/docker/x\n", {"memory/docker/x/memory.limit_in_bytes": "9223372036854771712\n",
                                                 "memory/docker/memory.limit_in_bytes": "268435456\n"}, 256 << 20),
    ("5:memory:/docker/x\n", {"memory/docker/x/memory.limit_in_bytes": "9223372036854771712\n"}, None),
    ("0::/a\n", {"a/memory.max": "garbage\n"}, None),
    ("not a cgroup file\n", {}, None),
], ids=["v2-ancestor", "v2-own", "v2-none", "v1-ancestor", "v1-unlimited", "unreadable-value", "no-entries"])
def test_the_smallest_limit_of_the_group_and_its_ancestors(tmp_path, proc, files, expected):
    root, proc_path = cgroup_tree(tmp_path, proc, files)
    assert limits.cgroup_memory_limit(root, proc_path) == expected


def test_no_proc_file_is_no_limit(tmp_path):
    assert limits.cgroup_memory_limit(str(tmp_path), str(tmp_path / "missing")) is None


def test_usable_memory_is_the_smaller_of_physical_and_the_group(monkeypatch):
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    monkeypatch.setattr(limits, "cgroup_memory_limit", lambda: None)
    assert limits.usable_memory() == physical
    monkeypatch.setattr(limits, "cgroup_memory_limit", lambda: 64 << 20)
    assert limits.usable_memory() == 64 << 20
    monkeypatch.setattr(limits, "cgroup_memory_limit", lambda: physical * 2)
    assert limits.usable_memory() == physical


def test_a_container_limit_bounds_the_inputs(tmp_path, monkeypatch):
    """Under a 2 KiB group limit, the 1 KiB input of the sample Conv+BN (1x4x8x8 float32) is more than
    a quarter: refused before anything runs, nothing written."""
    import onnx

    import builders

    src, dst = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(builders.conv_bn_model(), src)
    monkeypatch.setattr(limits, "cgroup_memory_limit", lambda: 2048)
    assert inputs.memory_limit() == 512
    with pytest.raises(bnfold.BnfoldError, match="bnfold allows 512 bytes: 1/4 of the memory it may use"):
        bnfold.optimize(src, dst)
    assert not dst.exists()
