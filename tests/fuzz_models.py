"""Long runs of the random-model checks (``tests/random_models.py``) over thousands of seeds.

    python tests/fuzz_models.py --count 5000 --seed 123 -j 2

runs seeds 123 .. 5122 (each seed is one model; the same seed always makes the same model) in 2
worker processes and prints how many models ran, their folds and refusals, which features they
covered, and every failing seed grouped by problem class, with the smallest failing model's
features and the exact problem text. Exit code 1 if any seed failed.

Other options:
    --seeds 17,42,108        just these seeds (e.g. to rerun the failures of a long run)
    --grep REGEX             only seeds whose feature list matches REGEX (e.g. --grep overload)
    --json FILE              everything as JSON: per seed problems, folds, refusals, features
    --keep DIR               save every failing model into DIR/seed<N>/ (model.onnx + side files)
    --timeout SECONDS        per seed (default 120); a seed that hangs or crashes its worker
                             (a segfault in onnxruntime) is reported as a problem of its own
    --summarize FILE         print the summary of a --json file again (nothing runs)

Reproduce one seed in Python::

    import random_models as rm                      # with tests/ on sys.path
    gen = rm.random_model(17); print(gen.describe())
    print(rm.check_generated(gen, "/tmp/seed17").problems)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import queue
import re
import selectors
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARK = "@@fuzz "


def worker() -> None:
    """Read seeds from stdin, one per line; answer each with one JSON line on stdout."""
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(HERE))
    import random_models as rm

    import bnfold.folding  # noqa: F401  (imported before the first seed's clock starts)

    out = sys.stdout
    sys.stdout = sys.stderr  # anything else printed goes to stderr, never into the protocol
    out.write(MARK + json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        seed = int(line)
        start = time.perf_counter()
        record = {"seed": seed}
        try:
            gen = rm.random_model(seed)
            record["features"] = gen.describe()
            with tempfile.TemporaryDirectory(prefix=f"fuzz{seed}-") as tmp:
                outcome = rm.check_generated(gen, tmp)
            record.update(problems=outcome.problems, folds=outcome.folds, refusals=outcome.refusals,
                          fold_rules=outcome.fold_rules, reasons=[rm.problem_class(r) for r in outcome.refusal_reasons])
        except Exception as exc:  # the checker itself broke: report it, go on
            record.update(problems=[f"harness: {type(exc).__name__}: {exc}"], folds=0, refusals=0, fold_rules=[],
                          reasons=[])
        record["seconds"] = time.perf_counter() - start
        out.write(MARK + json.dumps(record) + "\n")
        out.flush()


class Pool:
    """Worker processes fed one seed at a time; a worker that dies or hangs is replaced."""

    def __init__(self, jobs: int, timeout: float):
        self.jobs, self.timeout = jobs, timeout
        self.results: dict[int, dict] = {}
        self.lock = threading.Lock()

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def _serve(self, seeds: queue.Queue, progress) -> None:
        proc = None
        while True:
            try:
                seed = seeds.get_nowait()
            except queue.Empty:
                break
            if proc is None:
                proc = self._spawn()
                if self._read(proc, timeout=max(self.timeout, 300.0)) is None:
                    raise RuntimeError("a worker process did not start (run with --seeds N --jobs 1 to see why)")
            record = None
            try:
                proc.stdin.write(f"{seed}\n")
                proc.stdin.flush()
                record = self._read(proc)
            except (BrokenPipeError, OSError):
                record = None
            if record is None:  # crashed or hung
                proc.kill()
                code = proc.wait()
                what = f"killed after {self.timeout:g} s (hang)" if code == -9 else f"died with exit code {code}"
                record = {"seed": seed, "problems": [f"crash: the worker {what} on this seed"], "folds": 0,
                          "refusals": 0, "fold_rules": [], "reasons": [], "seconds": 0.0}
                proc = None
            with self.lock:
                self.results[seed] = record
                progress()
        if proc is not None:
            proc.stdin.close()
            proc.wait()

    def _read(self, proc, timeout: float | None = None) -> dict | None:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                line = proc.stdout.readline()
                if not line:
                    return None
                if line.startswith(MARK):
                    return json.loads(line[len(MARK):])
        finally:
            sel.close()

    def run(self, seeds: list[int]) -> dict[int, dict]:
        todo: queue.Queue = queue.Queue()
        for s in seeds:
            todo.put(s)
        total, start = len(seeds), time.perf_counter()

        def progress():
            done = len(self.results)
            if sys.stderr.isatty() and (done % 10 == 0 or done == total):
                rate = done / max(time.perf_counter() - start, 1e-9)
                failed = sum(1 for r in self.results.values() if r["problems"])
                sys.stderr.write(f"\r{done}/{total} models, {failed} failing, {rate:.1f}/s ")
                sys.stderr.flush()

        threads = [threading.Thread(target=self._serve, args=(todo, progress)) for _ in range(self.jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        return self.results


def summarize(results: dict[int, dict], seconds: float, jobs: int) -> str:
    sys.path.insert(0, str(HERE))
    import random_models as rm

    lines = []
    records = [results[s] for s in sorted(results)]
    for r in records:
        if "features" not in r:
            try:
                r["features"] = rm.random_model(r["seed"]).describe()
            except Exception as exc:
                r["features"] = f"(generator failed: {exc})"
    failing = [r for r in records if r["problems"]]
    folds = sum(r["folds"] for r in records)
    refusals = sum(r["refusals"] for r in records)
    lines.append(f"{len(records)} models in {seconds:.1f} s with {jobs} worker(s) "
                 f"({seconds / max(len(records), 1) * 1000:.0f} ms per model, wall clock); "
                 f"{folds} folds, {refusals} refusals; {len(failing)} failing seeds")
    rules = collections.Counter(rule for r in records for rule in r["fold_rules"])
    lines.append("folds per rule: " + ", ".join(f"{k} {v}" for k, v in rules.most_common()))
    reasons = collections.Counter(reason for r in records for reason in r["reasons"])
    lines.append("most common refusal reasons:")
    lines += [f"  {v:6d}  {k}" for k, v in reasons.most_common(12)]
    features = [r.get("features", "") for r in records]
    covered = {name: sum(1 for f in features if re.search(pattern, f)) for name, pattern in rm.COVERAGE.items()}
    lines.append("models per feature: " + ", ".join(f"{k} {v}" for k, v in covered.items()))
    # each failing seed is filed under its first problem (the later ones are often its consequences)
    groups: dict[str, list[dict]] = collections.defaultdict(list)
    for r in failing:
        groups[rm.problem_class(r["problems"][0])].append(r)
    if groups:
        lines.append(f"\nfailing seeds by first problem ({len(groups)} class{'es' if len(groups) != 1 else ''}):")
    for cls, rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        smallest = min(rs, key=lambda r: len(r.get("features", "")))
        seeds = [r["seed"] for r in rs]
        also = collections.Counter(rm.problem_class(p) for r in rs for p in r["problems"][1:])
        lines.append(f"\n[{len(rs)} seeds] {cls}")
        lines.append(f"  seeds: {', '.join(map(str, seeds[:40]))}{' ...' if len(seeds) > 40 else ''}")
        lines.append(f"  smallest: seed {smallest['seed']}: {smallest.get('features', '')}")
        lines.append(f"  problem:  {smallest['problems'][0]}")
        for other, n in also.most_common(3):
            lines.append(f"  then ({n}x): {other}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", help="comma-separated seeds (instead of --count/--seed)")
    parser.add_argument("-j", "--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--grep", help="only seeds whose feature list matches this regular expression")
    parser.add_argument("--json", help="write every result to this file")
    parser.add_argument("--keep", help="save failing models into this folder")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--summarize", help="summarize a --json file of an earlier run")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker()
        return 0
    if args.summarize:
        records = json.loads(Path(args.summarize).read_text())
        print(summarize({r["seed"]: r for r in records}, sum(r["seconds"] for r in records), 1))
        return 1 if any(r["problems"] for r in records) else 0
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(range(args.seed, args.seed + args.count))
    if args.grep:
        sys.path.insert(0, str(HERE))
        import random_models as rm

        pattern = re.compile(args.grep)
        seeds = [s for s in seeds if pattern.search(rm.random_model(s).describe())]
        print(f"{len(seeds)} seeds match {args.grep!r}")
    start = time.perf_counter()
    results = Pool(args.jobs, args.timeout).run(seeds)
    seconds = time.perf_counter() - start
    print(summarize(results, seconds, args.jobs))
    if args.json:
        Path(args.json).write_text(json.dumps([results[s] for s in sorted(results)], indent=1))
    if args.keep:
        sys.path.insert(0, str(HERE))
        import random_models as rm

        for s, r in results.items():
            if r["problems"]:
                folder = Path(args.keep) / f"seed{s}"
                rm.save(rm.random_model(s), folder)  # model.onnx and its side files
                (folder / "problems.txt").write_text(r.get("features", "") + "\n\n" + "\n".join(r["problems"]) + "\n")
    return 1 if any(r["problems"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
