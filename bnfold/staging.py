"""Atomic output: every file is written in a private staging folder beside its destination, then moved in.

Guarantees of ``staged_output``:

* after any failure or catchable signal nothing at the destination changed and the staging
  folder is gone (its removal runs with signals held: see ``bnfold.signals``);
* the move into place (the side file ``<name>.data`` first, the model last, so the model never
  points at missing data) runs with signals blocked, so no signal stops it half-way. SIGKILL
  still can: between the two renames that leaves the new side file beside the old model, and the
  new model in the staging folder with a commit file naming the side file it moved (device,
  inode, size, mtime); the next ``sweep`` of that folder finishes the move (rolls it forward) if that very
  side file is still in place, which makes the pair consistent again (else it removes it);
* names fit wherever the final names fit: the folder is ``.bnfold-tmp-<pid>-<random>`` (a few
  dozen bytes whatever the destination's name) and the files in it carry the destination's
  names. The staged model keeps its final name because ``io.write_model`` names the side file
  (and the model's reference to it) after the file it writes;
* folder and glob scans (``bnfold check``, batch ``optimize``) skip staging folders
  (``is_staging``); ``sweep`` removes those that provably belong to a dead bnfold process of this
  user on this machine: each holds an owner file naming the host, boot, pid and the process's
  start time, so a pid reused by another process does not keep a leftover alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from . import signals
from .errors import OutputError

PREFIX = ".bnfold-tmp-"
_NAME = re.compile(re.escape(PREFIX) + r"(\d+)-[a-z0-9_]+")
_OWNER, _COMMIT = ".bnfold-owner", ".bnfold-commit"  # who made it; which side file it has moved in
SIDE_SUFFIX = ".data"  # io.side_file: <name>.data

_commits = 0  # outputs moved into place by this process (counted with signals held)
_swept: set[str] = set()  # folders swept by this process already


def commit_count() -> int:
    """Outputs this process has moved into place. Read before a job and after an ``Interrupted``
    to know whether the job's output was written before the signal took effect."""
    return _commits


def is_staging(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies in a staging folder (a scan must skip it)."""
    return any(part.startswith(PREFIX) for part in Path(path).parts)


@contextlib.contextmanager
def staged_output(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield where to write ``dest``: a path of the same name in a private folder beside it.

    On normal exit the files written there (the model and its side file, if any) are moved into
    ``dest``'s folder, the model last; on any error or signal the folder is removed and nothing at
    the destination changed. OutputError, before anything is created, when ``dest``'s name is
    longer than its file system allows.
    """
    dest = Path(dest)
    check_fits(dest)
    folder = dest.parent
    if str(folder) not in _swept:
        _swept.add(str(folder))
        sweep(folder)
    stage = None
    try:
        with signals.held():
            try:
                stage = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=folder))
                (stage / _OWNER).write_text(json.dumps(_identity(os.getpid())))
            except OSError as exc:  # a read-only or virtual file system (/proc), a full disk, no permission
                raise OutputError(f"{dest}: cannot write in {folder}: {exc.strerror or exc}") from None
        staged = stage / dest.name
        yield staged
        _pause("staged", dest)
        _commit(stage, staged, folder)
    finally:
        if stage is not None:
            with signals.held():
                shutil.rmtree(stage, ignore_errors=True)


def _commit(stage: Path, staged: Path, folder: Path) -> None:
    global _commits
    side = staged.with_name(staged.name + SIDE_SUFFIX)
    with signals.held():
        if os.path.exists(side):  # False too when its name would be too long: then it was never written
            (stage / _COMMIT).write_text(json.dumps({"side": _file_key(side)}))  # a sweep finishes from here on
            _move(side, folder)
        _pause("commit", folder / staged.name)
        _move(staged, folder)
        _commits += 1


def _move(f: Path, folder: Path) -> None:
    target = folder / f.name
    os.chmod(f, _mode_for(target))
    os.replace(f, target)


def _mode_for(dest: Path) -> int:
    """The destination's current mode when replacing it, else what the umask gives a new file."""
    try:
        return dest.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc/self/status):
    setting it to read it back would, for that instant, give another thread's new files mode 0666."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore, one thread at a time
        umask = os.umask(0o077)  # the strictest value for the instant it is in force
        os.umask(umask)
        return umask


# -- names that fit ---------------------------------------------------------------------------


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name (bytes) the file system of ``folder`` (or its nearest existing parent) allows."""
    folder = Path(os.path.abspath(folder))
    for candidate in (folder, *folder.parents):
        try:
            limit = os.pathconf(candidate, "PC_NAME_MAX")
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            break
        return limit if limit > 0 else 255
    return 255


def check_fits(dest: str | os.PathLike, *, side_file: bool = False) -> None:
    """OutputError when ``dest``'s name, or with ``side_file`` its side file's (``<name>.data``, 5
    bytes longer), is longer than the file system of its folder allows."""
    dest = Path(dest)
    limit, size = name_max(dest.parent), len(os.fsencode(dest.name))
    if size > limit:
        raise OutputError(f"{dest}: the file name is {size} bytes long; this file system allows {limit}")
    if side_file and size + len(SIDE_SUFFIX) > limit:
        raise OutputError(f"{dest}: its side file {dest.name}{SIDE_SUFFIX} would be {size + len(SIDE_SUFFIX)} bytes "
                          f"long and this file system allows {limit}; give the output a name of at most "
                          f"{limit - len(SIDE_SUFFIX)} bytes")


# -- stale staging folders --------------------------------------------------------------------


def sweep(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the staging folders in ``folder`` that belong to a bnfold process that is gone
    (this user's, this machine's; see the module docstring); one that was moving its files into
    place is rolled forward first. Returns the folders removed."""
    try:
        entries = [Path(e.path) for e in os.scandir(folder) if e.name.startswith(PREFIX)]
    except OSError:
        return []
    removed = []
    for path in entries:
        try:
            if not _stale(path):
                continue
            with signals.held():
                _roll_forward(path)
                shutil.rmtree(path)
        except OSError:  # another sweep (another bnfold in this folder) got there first
            continue
        removed.append(path)
    return removed


def _roll_forward(stage: Path) -> None:
    """Finish a move cut between its two renames: the model still staged goes into place, if the
    side file the commit file names is the one beside it now (nothing else changed it since)."""
    moved = _read_json(stage / _COMMIT)
    staged = [f for f in stage.iterdir() if f.name not in (_OWNER, _COMMIT)]
    if moved is None or len(staged) != 1:
        return  # not committing, or nothing moved yet: the old files are whole
    if _file_key(stage.parent / (staged[0].name + SIDE_SUFFIX)) == moved.get("side"):
        _move(staged[0], stage.parent)


def _stale(path: Path) -> bool:
    match = _NAME.fullmatch(path.name)
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if match is None or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return False
    pid = int(match[1])
    owner = _read_json(path / _OWNER)
    if owner is None:  # its process stopped between creating it and naming itself: nothing staged yet
        return not _alive(pid) and not any(path.iterdir())
    me = _identity(None)
    if owner.get("host") != me["host"] or owner.get("pid") != pid:
        return False  # another machine's (a shared folder), or not a folder bnfold made
    if owner.get("boot") != me["boot"] or not _alive(pid):
        return True
    started = _start_time(pid)
    return started is not None and owner.get("start") is not None and started != owner["start"]


def _file_key(path: Path) -> list[int] | None:
    """What tells one file from another that took its place: device, inode, size, modification time."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _identity(pid: int | None) -> dict:
    """Who a staging folder belongs to: host, boot, and with ``pid`` that process's start time."""
    import socket  # only when staging: 3 ms of every start otherwise

    identity: dict[str, object] = {"host": socket.gethostname(), "boot": _read("/proc/sys/kernel/random/boot_id")}
    if pid is not None:
        identity.update(pid=pid, start=_start_time(pid))
    return identity


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux), None where it cannot be known."""
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    try:
        return int(text.rsplit(")", 1)[1].split()[19])  # field 22, counted after the command name
    except (IndexError, ValueError):
        return None


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


# -- test hook --------------------------------------------------------------------------------


def _pause(point: str, dest: Path) -> None:
    """Test hook: with ``BNFOLD_TEST_PAUSE=POINT:DIR`` in the environment, stop at POINT until the
    file DIR/go exists. Points: ``staged`` (the output is written and validated, about to move
    into place) and ``commit`` (half-way through the move, signals held). On arrival the process
    writes DIR/paused-PID (holding ``dest``); at ``commit`` also DIR/held-PID once a signal waits."""
    spec = os.environ.get("BNFOLD_TEST_PAUSE", "")
    want, _, folder = spec.partition(":")
    if want != point or not folder:
        return
    Path(folder, f"paused-{os.getpid()}").write_text(str(dest))
    while not os.path.exists(os.path.join(folder, "go")):
        if signals.pending() is not None or set(signals.HELD) & signal.sigpending():
            Path(folder, f"held-{os.getpid()}").touch()
        time.sleep(0.01)
