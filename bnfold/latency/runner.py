"""``bench``: latency of an original model against its folded version (parent side).

Prepares the two model files (folding in memory and writing the result to a temporary folder
when no folded model is given), runs ``bnfold.latency._worker`` in a child process (a runtime
crash becomes a one-line ``BnfoldError``, not a dead bnfold), forwards the child's progress
events, and turns the raw timings into a ``BenchResult``: per setting the latency summaries, the
speedup ``median(original) / median(folded)`` with its paired bootstrap interval, and the same
for session creation. Statistics are computed here, from the raw numbers the JSON also carries.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from ..errors import BnfoldError
from ..stats import ModelStats, model_stats
from . import MIN_PAIRS, RUNS, SESSION_REPEATS, TIME_BUDGET, WARMUP, stats

#: The settings, in the order they run and are reported, with what each one stands for.
SETTINGS = {
    "disabled": "graph optimizations off, the graph as written: what a runtime that does not fuse pays",
    "default": "onnxruntime's default level, which fuses Conv+BN itself at session creation: "
               "what a plain onnxruntime deployment sees",
}
#: How the child is started; a list so tests can substitute a misbehaving child.
WORKER = [sys.executable, "-m", "bnfold.latency._worker"]

ProgressCallback = Callable[[dict], None]


@dataclass(frozen=True)
class BenchOptions:
    """How to measure. ``runs`` and ``time_budget`` (seconds) apply per setting; measuring stops at
    whichever comes first, after at least ``MIN_PAIRS`` pairs. ``threads`` None keeps onnxruntime's
    default intra-op thread count; ``provider`` None means CPU. ``on_progress`` receives the child's
    events (``{"event": "stage"|"pair"|"done", ...}``)."""

    runs: int = RUNS
    time_budget: float = TIME_BUDGET
    warmup: int = WARMUP
    threads: int | None = None
    provider: str | None = None
    session_repeats: int = SESSION_REPEATS
    on_progress: ProgressCallback | None = field(default=None, compare=False, repr=False)

    def checked(self) -> BenchOptions:
        """These options with the provider resolved to its full name; BnfoldError for bad values."""
        if self.runs < MIN_PAIRS:
            raise BnfoldError(f"--runs must be at least {MIN_PAIRS} (a confidence interval needs a few pairs)")
        if not self.time_budget > 0:
            raise BnfoldError("--time-budget must be more than 0 seconds")
        if self.warmup < 0 or self.session_repeats < 1:
            raise BnfoldError("--warmup must be 0 or more and session repeats at least 1")
        if self.threads is not None and self.threads < 1:
            raise BnfoldError("--threads must be at least 1")
        return replace(self, provider=resolve_provider(self.provider))


def resolve_provider(name: str | None) -> str:
    """The execution provider named ``name`` (case-insensitive, ``ExecutionProvider`` optional) among
    those this onnxruntime has; CPU for None. BnfoldError naming the available ones otherwise."""
    import onnxruntime as ort

    if name is None:
        return "CPUExecutionProvider"
    available = ort.get_available_providers()
    wanted = name.lower()
    for provider in available:
        if wanted in (provider.lower(), provider.lower().removesuffix("executionprovider")):
            return provider
    raise BnfoldError(f"unknown execution provider '{name}' (available here: {', '.join(available)})")


@dataclass(frozen=True)
class ModelFigures:
    """Size of one model: nodes and parameters (``bnfold.stats``) and bytes on disk (side files included)."""

    nodes: int
    parameters: int
    file_bytes: int

    @classmethod
    def of(cls, model_stats_: ModelStats, file_bytes: int) -> ModelFigures:
        return cls(model_stats_.nodes, model_stats_.parameters, file_bytes)

    def to_dict(self) -> dict:
        return {"nodes": self.nodes, "parameters": self.parameters, "file_bytes": self.file_bytes}


@dataclass
class SettingResult:
    """One optimization setting: raw timings (ms) and what they say.

    ``original_ms[i]`` and ``folded_ms[i]`` are pair i; ``first[i]`` says which of the two ran first.
    """

    name: str
    optimization_level: str
    meaning: str
    providers: list[str]
    session_config: dict[str, str]
    original_ms: list[float]
    folded_ms: list[float]
    first: list[str]
    session_original_ms: list[float]
    session_folded_ms: list[float]
    stopped_by: str
    seconds: float
    latency: dict[str, stats.Summary]
    speedup: stats.Speedup
    session: dict[str, stats.Summary]
    session_speedup: stats.Speedup

    @classmethod
    def from_raw(cls, raw: dict, seed: int) -> SettingResult:
        runs, sessions = raw["latency_ms"], raw["session_ms"]
        return cls(
            raw["name"], raw["optimization_level"], SETTINGS[raw["name"]], raw["providers"], raw["session_config"],
            runs["original"], runs["folded"], raw["first"], sessions["original"], sessions["folded"],
            raw["stopped_by"], raw["seconds"],
            latency={k: stats.summarize(v) for k, v in runs.items()},
            speedup=stats.speedup(runs["original"], runs["folded"], seed=seed),
            session={k: stats.summarize(v) for k, v in sessions.items()},
            session_speedup=stats.speedup(sessions["original"], sessions["folded"], seed=seed),
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "optimization_level": self.optimization_level,
            "meaning": self.meaning,
            "providers": self.providers,
            "session_config": self.session_config,
            "pairs": len(self.first),
            "stopped_by": self.stopped_by,
            "seconds": self.seconds,
            "latency_ms": {k: v.to_dict() for k, v in self.latency.items()},
            "speedup": self.speedup.to_dict(),
            "session_ms": {k: v.to_dict() for k, v in self.session.items()},
            "session_speedup": self.session_speedup.to_dict(),
            "raw": {
                "original_ms": self.original_ms,
                "folded_ms": self.folded_ms,
                "first": self.first,
                "session_original_ms": self.session_original_ms,
                "session_folded_ms": self.session_folded_ms,
            },
        }


@dataclass
class BenchResult:
    """What ``bench`` measured. ``folded`` is None when the folded model was made in memory
    (``folds`` then counts the folds; it is None when a folded model was given)."""

    original: str
    folded: str | None
    folds: int | None
    before: ModelFigures
    after: ModelFigures
    provider: str
    threads: int | None
    inputs: dict[str, list[int]]
    seed: int
    warmup: int
    runs: int
    time_budget: float
    session_repeats: int
    onnxruntime: str
    settings: list[SettingResult]
    seconds: float = 0.0

    def setting(self, name: str) -> SettingResult:
        return next(s for s in self.settings if s.name == name)

    def to_dict(self) -> dict:
        return {
            "original": self.original,
            "folded": self.folded,
            "folds": self.folds,
            "model": {"before": self.before.to_dict(), "after": self.after.to_dict()},
            "runtime": {"onnxruntime": self.onnxruntime, "provider": self.provider, "threads": self.threads},
            "protocol": {
                "inputs": self.inputs,
                "seed": self.seed,
                "warmup": self.warmup,
                "max_pairs": self.runs,
                "time_budget_s": self.time_budget,
                "min_pairs": MIN_PAIRS,
                "session_repeats": self.session_repeats,
                "order": "interleaved pairs, original first in even pairs, folded first in odd ones (ABBA)",
                "speedup": "median(original) / median(folded); above 1 the folded model is faster; "
                           "interval: paired percentile bootstrap over the pairs",
            },
            "settings": [s.to_dict() for s in self.settings],
            "seconds": self.seconds,
        }


def bench(
    original: onnx.ModelProto | str | os.PathLike,
    folded: onnx.ModelProto | str | os.PathLike | None = None,
    *,
    input_shapes: dict[str, list[int]] | None = None,
    seed: int = 0,
    options: BenchOptions | None = None,
    rules=None,
) -> BenchResult:
    """Latency of ``original`` against ``folded`` (default: ``original`` folded in memory).

    Both settings (``disabled``, ``default``) are measured; see ``bnfold.latency._worker`` for the
    protocol. ``seed`` seeds the random inputs and the bootstrap. Raises BnfoldError for unusable
    models or options, and when the runtime cannot run a model or crashes (the message says where).
    """
    from ..folding import fold
    from ..io import write_model
    from ..inputs import check_input_bytes, resolve_shapes

    options = (options or BenchOptions()).checked()
    input_shapes = input_shapes or {}
    with tempfile.TemporaryDirectory(prefix="bnfold-bench-") as workdir:
        original_path, model, data_files, original_bytes, base_dir = _materialize(original, workdir, "original.onnx")
        label = str(original_path) if not isinstance(original, onnx.ModelProto) else "<in-memory model>"
        check_input_bytes(label, model, resolve_shapes(label, model, input_shapes))  # before anything runs
        before = ModelFigures.of(model_stats(model), original_bytes)
        if folded is None:
            # A model we loaded ourselves may be folded in place; one the caller gave us may not.
            result = fold(model, rules, in_place=not isinstance(original, onnx.ModelProto), base_dir=base_dir)
            folded_path = Path(workdir) / "folded.onnx"
            folded_bytes = write_model(result.model, folded_path, external_data=bool(data_files), base_dir=base_dir)
            after, folds, folded_label = ModelFigures.of(result.after, folded_bytes), len(result.folds), None
            del result
        else:
            folded_path, other, _, folded_bytes, _ = _materialize(folded, workdir, "folded.onnx")
            _check_same_inputs(original_path, model, folded_path, other)
            after, folds = ModelFigures.of(model_stats(other), folded_bytes), None
            folded_label = str(folded_path) if not isinstance(folded, onnx.ModelProto) else "<in-memory model>"
            del other
        del model
        return run_bench(original_path, folded_path, before=before, after=after, folds=folds, input_shapes=input_shapes,
                         seed=seed, options=options, original_label=label, folded_label=folded_label, checked=True)


def run_bench(
    original: str | os.PathLike,
    folded: str | os.PathLike,
    *,
    before: ModelFigures,
    after: ModelFigures,
    folds: int | None,
    input_shapes: dict[str, list[int]] | None,
    seed: int,
    options: BenchOptions,
    original_label: str | None = None,
    folded_label: str | None = None,
    checked: bool = False,
) -> BenchResult:
    """Measure two model files already on disk (``bench`` and ``optimize --bench`` end here)."""
    import onnxruntime as ort

    if not checked:
        options = options.checked()
    label = original_label or str(original)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bnfold-bench-run-") as workdir:
        request = {
            "original": os.fspath(original),
            "folded": os.fspath(folded),
            "input_shapes": input_shapes or {},
            "seed": seed,
            "settings": list(SETTINGS),
            "provider": options.provider,
            "threads": options.threads,
            "warmup": options.warmup,
            "runs": options.runs,
            "time_budget": options.time_budget,
            "min_pairs": min(MIN_PAIRS, options.runs),
            "session_repeats": options.session_repeats,
            "result": os.path.join(workdir, "result.json"),
        }
        raw = _run_child(request, workdir, options.on_progress, label)
    if raw.get("error"):
        raise BnfoldError(f"{label}: latency not measured: {raw['error']}")
    return BenchResult(
        original=label, folded=folded_label, folds=folds, before=before, after=after, provider=options.provider,
        threads=options.threads, inputs=raw["inputs"], seed=seed, warmup=options.warmup, runs=options.runs,
        time_budget=options.time_budget, session_repeats=options.session_repeats, onnxruntime=ort.__version__,
        settings=[SettingResult.from_raw(s, seed) for s in raw["settings"]], seconds=time.perf_counter() - start,
    )


def _materialize(model, workdir: str, name: str) -> tuple[Path, onnx.ModelProto, list[Path], int, Path | None]:
    """A file for ``model`` (a path stays itself; a ModelProto is written to ``workdir``), the loaded
    model, its external data files, its bytes on disk, and the folder its weights are read from when
    it was read lazily (a path: weights stay on disk, as in ``optimize``; None for a ModelProto)."""
    from ..io import read_model, write_model

    if isinstance(model, onnx.ModelProto):
        path = Path(workdir) / name
        return path, model, [], write_model(model, path), None
    path = Path(model)
    loaded, data_files = read_model(path, lazy=True)
    return path, loaded, data_files, sum(f.stat().st_size for f in [path, *data_files] if f.exists()), path.parent


def _check_same_inputs(a_path: Path, a: onnx.ModelProto, b_path: Path, b: onnx.ModelProto) -> None:
    def signature(model: onnx.ModelProto) -> list[tuple[str, int]]:
        inits = {t.name for t in model.graph.initializer}
        return [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input if i.name not in inits]

    if sorted(signature(a)) != sorted(signature(b)):
        names_a, names_b = (", ".join(n for n, _ in signature(m)) or "none" for m in (a, b))
        raise BnfoldError(f"{b_path}: its inputs ({names_b}) differ from those of {a_path} ({names_a}); "
                          "both models must take the same inputs")


def _run_child(request: dict, workdir: str, on_progress: ProgressCallback | None, label: str) -> dict:
    request_path = os.path.join(workdir, "request.json")
    Path(request_path).write_text(json.dumps(request))
    stage = "starting"
    with open(os.path.join(workdir, "stderr.txt"), "w+") as err:  # a file: a full pipe cannot block the child
        proc = subprocess.Popen([*WORKER, request_path], stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            for line in proc.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "stage":
                    stage = event.get("text", stage)
                if on_progress is not None:
                    on_progress(event)
            proc.wait()
        finally:
            if proc.poll() is None:  # interrupted (Ctrl-C) or the callback raised: do not leave it running
                proc.kill()
                proc.wait()
            proc.stdout.close()
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0 or not os.path.exists(request["result"]):
        raise BnfoldError(f"{label}: latency not measured: {_crash_message(proc.returncode, stderr, stage)}")
    return json.loads(Path(request["result"]).read_text())


def _crash_message(returncode: int, stderr: str, stage: str) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the runtime crashed ({name}) while {stage}"
    last = (stderr.strip().splitlines() or ["no message"])[-1]
    return f"the measuring process failed (exit {returncode}) while {stage}: {' '.join(last.split())[:300]}"
