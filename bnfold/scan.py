"""Finding model files under folders and glob patterns, with bounded work on any file system.

Only regular files are models (a FIFO would block the reader, a device such as /dev/zero never
ends). Searches follow symbolic links to folders but visit each real folder once per pattern
position, so a link loop (``a/loop -> ..``) ends instead of running for ever, and they never
enter a staging folder (``staging.is_staging``). Glob patterns keep the shell's rules: ``*``,
``?`` and ``[...]`` stay within one path component, ``**`` as a whole component crosses any
number of folders, and names starting with a dot match only a pattern component that starts
with a dot; a folder search skips them (a ``.venv`` holds onnx's own test models).
"""

from __future__ import annotations

import fnmatch
import glob
import os
import stat

from .staging import is_staging


def is_regular(path: str | os.PathLike) -> bool:
    """Whether ``path`` is (or links to) a regular file: the only kind of file read as a model."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def kind_of(path: str | os.PathLike) -> str:
    """What ``path`` is, in words, for messages ("a FIFO", "a character device", ...)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a broken link" if os.path.islink(path) else "missing"
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


def _folder_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _entries(folder: str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:  # unreadable folder: nothing found there
        return []


def models_in(folder: str, suffix: str = ".onnx") -> list[str]:
    """Every regular file named ``*suffix`` below ``folder``, sorted; names starting with a dot
    (``.git``, ``.venv``, ``.hidden.onnx``) and staging folders are skipped, as in a glob."""
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        key = _folder_key(current)
        if key is None or key in seen:
            continue
        seen.add(key)
        for entry in _entries(current):
            path = os.path.join(current, entry.name)
            if entry.name.startswith(".") or is_staging(entry.name):
                continue
            if _folder_key(path) is not None:
                stack.append(path)
            elif entry.name.endswith(suffix) and is_regular(path):
                found.append(path)
    return sorted(found)


def expand(pattern: str) -> list[str]:
    """Every path matching the glob ``pattern`` (files and folders), sorted, each once."""
    if not glob.has_magic(pattern):
        return [pattern] if os.path.lexists(pattern) else []
    head, parts = _split(pattern)
    found: set[str] = set()
    seen: set[tuple[tuple[int, int], int]] = set()
    stack = [(head, 0)]
    while stack:
        folder, index = stack.pop()
        key = _folder_key(folder or ".")
        if key is None or (key, index) in seen:
            continue
        seen.add((key, index))
        part = parts[index]
        last = index == len(parts) - 1
        if part == "**":
            if last:
                found.add(folder or ".")
            else:
                stack.append((folder, index + 1))  # ** matches no folder at all, too
            for entry in _entries(folder or "."):
                path = os.path.join(folder, entry.name)
                if not entry.name.startswith(".") and not is_staging(entry.name) and _folder_key(path) is not None:
                    stack.append((path, index))
                    if last:
                        found.add(path)
            continue
        names = [part] if not glob.has_magic(part) else [
            e.name for e in _entries(folder or ".")
            if fnmatch.fnmatchcase(e.name, part) and (part.startswith(".") or not e.name.startswith("."))]
        for name in names:
            path = os.path.join(folder, name)
            if is_staging(name) or not os.path.lexists(path):
                continue
            if last:
                found.add(path)
            elif _folder_key(path) is not None:
                stack.append((path, index + 1))
    return sorted(found)


def _split(pattern: str) -> tuple[str, list[str]]:
    """``(fixed folder, components from the first one with a wildcard on)``."""
    drive, rest = os.path.splitdrive(pattern)
    root = rest[:1] if rest.startswith(os.sep) else ""
    parts = [p for p in rest.split(os.sep) if p]
    fixed: list[str] = []
    while parts and not glob.has_magic(parts[0]):
        fixed.append(parts.pop(0))
    head = drive + root + os.sep.join(fixed)
    return head, parts
