"""Bounds on the work bnfold does for one model (a module of the standard library's ``os`` only: the
CLI reads its defaults before anything heavy is loaded)."""

from __future__ import annotations

import os

#: Seconds a validation may run (both models, every input set) before it is abandoned and
#: reported as not finished: a model whose run never ends (a Loop with a huge trip count) must
#: not stall a batch.
VALIDATE_TIMEOUT = 300.0


def usable_memory() -> int | None:
    """Bytes of memory this process may use: physical memory, or less where a control group (a
    container's ``--memory``, a CI job's limit) allows less; None where neither can be read.

    Bounds drawn from physical memory alone let a child grow past a container's limit, where the
    kernel's OOM killer ends it (or bnfold) without a word instead of the bound refusing the work.
    """
    try:
        physical: int | None = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        physical = None
    limits = [n for n in (physical, cgroup_memory_limit()) if n is not None and n > 0]
    return min(limits) if limits else None


def cgroup_memory_limit(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> int | None:
    """The smallest memory limit of this process's control group and its ancestors (cgroup v2
    ``memory.max``, v1 ``memory.limit_in_bytes``); None when there is none or it cannot be read."""
    try:
        with open(proc, encoding="utf-8", errors="replace") as f:
            entries = [line.rstrip("\n").split(":", 2) for line in f if line.count(":") >= 2]
    except OSError:
        return None
    found = []
    for _, controllers, path in entries:
        if controllers == "":  # v2: one unified hierarchy
            folder, name = root, "memory.max"
        elif "memory" in controllers.split(","):  # v1: the memory controller's own hierarchy
            folder, name = os.path.join(root, "memory"), "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p and p != ".."]
        for depth in range(len(parts), -1, -1):  # the group itself, then each ancestor up to the root
            value = _read_limit(os.path.join(folder, *parts[:depth], name))
            if value is not None:
                found.append(value)
    return min(found) if found else None


def _read_limit(path: str) -> int | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(64).strip()
    except OSError:
        return None
    if not text.isdigit():  # "max" (v2: no limit), or anything unexpected
        return None
    value = int(text)
    return value if 0 < value < 1 << 62 else None  # v1 writes ~2^63 for "no limit"
