"""Runs the measured tool processes for bench/compare.py: wall time, peak memory, exit status.

A small, separate process on purpose. Linux starts a child's ``ru_maxrss`` at the resident size
of the process it was forked from (the high-water mark is carried over fork and exec), so a tool
forked from the driver, which holds models and onnxruntime sessions, would be reported with the
driver's few hundred MB. Forked from this process (standard library only, about 10 MB) the
reported peak is the tool's own.

Protocol: one JSON request per line on stdin ``{"cmd": [...], "timeout": s, "log_dir": path}``,
one JSON result per line on stdout (see ``run_process``). Standard library only.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def cpu_busy_seconds() -> float:
    """CPU seconds spent by the whole machine (all cores) since boot, from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return float("nan")


def last_error_line(path: Path) -> str:
    """The line of stderr that says what went wrong: the last one naming an error, else the last one."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for line in reversed(lines):   # skip trailing progress bars and table borders
        if re.search(r"(Error|Exception|error:|Killed|Abort)", line):
            return line[:400]
    return lines[-1][:400] if lines else ""


def run_process(cmd: list[str], timeout: float, log_dir: str) -> dict:
    """Run ``cmd`` with stdout/stderr to files in ``log_dir``; kill its process group after ``timeout``.

    Returns seconds (wall), peak_bytes (``ru_maxrss`` of ``os.wait4``: the child's peak resident
    set, its waited-for children included), returncode (negative: killed by that signal),
    timed_out, stderr_tail, and others_cores: machine CPU time minus the child's own, over the
    wall time (how many cores other processes kept busy meanwhile).
    """
    logs = Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    err_path = logs / "stderr.txt"
    timed_out = threading.Event()
    with open(logs / "stdout.txt", "wb") as out, open(err_path, "wb") as err:
        busy0 = cpu_busy_seconds()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)

        def kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)   # the child's own process group (a new session)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
        busy = cpu_busy_seconds() - busy0
    proc.returncode = os.waitstatus_to_exitcode(status)
    child_cpu = usage.ru_utime + usage.ru_stime
    others = max(0.0, (busy - child_cpu) / seconds) if seconds > 0 and not math.isnan(busy) else None
    return {"seconds": seconds, "peak_bytes": usage.ru_maxrss * 1024, "returncode": proc.returncode,
            "timed_out": timed_out.is_set(), "stderr_tail": last_error_line(err_path), "others_cores": others,
            "cpu_seconds": child_cpu}


def own_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    print(json.dumps({"ready": True, "launcher_peak_bytes": own_rss_bytes()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            result = run_process(req["cmd"], req["timeout"], req["log_dir"])
        except OSError as exc:  # the command could not start
            result = {"seconds": 0.0, "peak_bytes": 0, "returncode": 127, "timed_out": False,
                      "stderr_tail": f"could not start: {exc}", "others_cores": None, "cpu_seconds": 0.0}
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
