"""``bench``: latency of an original model against its folded version (parent side).

Prepares the two model files (folding in memory and writing the result to a temporary folder
when no folded model is given), runs ``bnfold.latency._worker`` in a child process
(``bnfold.child``: a runtime crash becomes a one-line ``BnfoldError``, not a dead bnfold),
forwards the child's progress events, and turns the raw timings into a ``BenchResult``: per
setting the latency summaries, the per-run speedup (over rounds of fresh sessions) and the
session-creation speedup (over ABBA blocks), each with its exact interval; the four intervals
hold together at 95 % (``bnfold.latency.stats``).
Statistics are computed here, from the raw numbers the JSON also carries.

Before anything is timed, a given folded model must have the original's interface, and both must
agree on one seeded run (``bnfold.latency.interface``); otherwise a BnfoldError names the folded
model. ``BenchOptions.check_outputs`` False skips the output part (inputs are always checked).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from .. import child
from ..errors import BackendError, BnfoldError, ModelError, UsageError
from ..stats import ModelStats, model_stats
from . import MIN_PAIRS, MIN_ROUNDS, ROUNDS, RUNS, TIME_BUDGET, WARMUP, interface, stats

if TYPE_CHECKING:
    from ..io import ModelFile

#: The settings, in the order they run and are reported, with what each one stands for.
SETTINGS = {
    "disabled": "graph optimizations off, the graph as written: what a runtime that does not fuse pays",
    "default": "onnxruntime's default level, which fuses Conv+BN itself at session creation: "
               "what a plain onnxruntime deployment sees",
}
#: ``checks["interface"]`` of a folded model bnfold made itself from the original.
FOLDED_HERE = "folded by bnfold from the original"
#: How the child is started; a list so tests can substitute a misbehaving child.
WORKER = child.command("bnfold.latency._worker")

ProgressCallback = Callable[[dict], None]


@dataclass(frozen=True)
class BenchOptions:
    """How to measure. ``runs`` and ``time_budget`` (seconds) apply per setting; measuring stops at
    whichever comes first, after at least ``MIN_PAIRS`` pairs. They are spread over ``rounds``
    rounds, each with fresh sessions of both models (their creation timed), or fewer rounds when
    the budget runs out first (``bnfold.latency._worker``). ``threads`` None keeps onnxruntime's
    default intra-op thread count; ``provider`` None means CPU. ``check_outputs`` False skips the
    output check (module docstring). ``on_progress`` receives the child's events
    (``{"event": "stage"|"pair"|"done", ...}``)."""

    runs: int = RUNS
    time_budget: float = TIME_BUDGET
    warmup: int = WARMUP
    threads: int | None = None
    provider: str | None = None
    rounds: int = ROUNDS
    check_outputs: bool = True
    on_progress: ProgressCallback | None = field(default=None, compare=False, repr=False)

    def checked(self) -> BenchOptions:
        """These options with the provider resolved to its full name; BnfoldError for bad values."""
        if self.runs < MIN_PAIRS:
            raise UsageError(f"--runs must be at least {MIN_PAIRS} (a confidence interval needs a few pairs)")
        if not self.time_budget > 0:
            raise UsageError("--time-budget must be more than 0 seconds")
        if self.warmup < 0:
            raise UsageError("--warmup must be 0 or more")
        if self.rounds < MIN_ROUNDS:
            raise UsageError(f"--rounds must be at least {MIN_ROUNDS}")
        if self.threads is not None and self.threads < 1:
            raise UsageError("--threads must be at least 1")
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
    raise UsageError(f"unknown execution provider '{name}' (available here: {', '.join(available)})")


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

    ``original_ms[i]`` and ``folded_ms[i]`` are pair i; ``first[i]`` says which of the two ran first
    and ``rounds[i]`` in which round (fresh sessions) it ran. Session creation has two pairs per round
    (one ABBA block).
    """

    name: str
    optimization_level: str
    meaning: str
    providers: list[str]
    session_config: dict[str, str]
    original_ms: list[float]
    folded_ms: list[float]
    first: list[str]
    rounds: list[int]
    session_original_ms: list[float]
    session_folded_ms: list[float]
    stopped_by: str
    seconds: float
    latency: dict[str, stats.Summary]
    speedup: stats.Speedup
    session: dict[str, stats.Summary]
    session_speedup: stats.Speedup

    @classmethod
    def from_raw(cls, raw: dict) -> SettingResult:
        runs, sessions = raw["latency_ms"], raw["session_ms"]
        return cls(
            raw["name"], raw["optimization_level"], SETTINGS[raw["name"]], raw["providers"], raw["session_config"],
            runs["original"], runs["folded"], raw["first"], raw["round"], sessions["original"], sessions["folded"],
            raw["stopped_by"], raw["seconds"],
            latency={k: stats.summarize(v) for k, v in runs.items()},
            speedup=stats.round_speedup(runs["original"], runs["folded"], raw["round"]),
            session={k: stats.summarize(v) for k, v in sessions.items()},
            session_speedup=stats.speedup(sessions["original"], sessions["folded"]),
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "optimization_level": self.optimization_level,
            "meaning": self.meaning,
            "providers": self.providers,
            "session_config": self.session_config,
            "pairs": len(self.first),
            "rounds": len(set(self.rounds)),
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
                "round": self.rounds,
                "session_original_ms": self.session_original_ms,
                "session_folded_ms": self.session_folded_ms,
            },
        }


@dataclass
class BenchResult:
    """What ``bench`` measured. ``folded`` is None when the folded model was made in memory
    (``folds`` then counts the folds; it is None when a folded model was given). ``checks`` says
    what was checked before timing: ``{"interface": how FOLDED is known to take MODEL's inputs,
    "outputs": {"checked": bool, ...}}``."""

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
    rounds: int
    onnxruntime: str
    settings: list[SettingResult]
    seconds: float = 0.0
    checks: dict = field(default_factory=dict)

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
                "max_rounds": self.rounds,
                "order": "rounds, each creating two sessions of each model (timed, ABBA: original first in even "
                         "rounds) and keeping the second; then interleaved pairs in alternating order (ABBA), the "
                         "original first in the round's first pair in even rounds; a round's pairs 2j and 2j+1 "
                         "form its block j",
                "speedup": "block ratio sqrt(original[2j]*original[2j+1] / (folded[2j]*folded[2j+1])); per run: "
                           "median over rounds of the median block ratio of each round; session creation: median "
                           "block ratio over rounds; above 1 the folded model is faster; interval: exact "
                           "order-statistic (sign-test) interval of that median",
                "family": {"confidence": stats.FAMILY_CONFIDENCE, "intervals": stats.FAMILY_SIZE,
                           "correction": "Bonferroni", "interval_confidence": stats.CONFIDENCE,
                           "min_units": stats.min_units(stats.CONFIDENCE)},
            },
            "checks": self.checks,
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
    protocol. ``seed`` seeds the random inputs. A given ``folded`` must have ``original``'s
    interface and (unless ``options.check_outputs`` is False) its outputs on the seeded input, as a
    folded model made here must too (``bnfold.latency.interface``). Raises BnfoldError for unusable
    or incomparable models (naming the file at fault) or options, and when the runtime cannot run a
    model or crashes (the message says where).
    """
    from ..api import fold
    from ..io import write_model
    from ..inputs import check_input_bytes, resolve_shapes

    options = (options or BenchOptions()).checked()
    input_shapes = input_shapes or {}
    with tempfile.TemporaryDirectory(prefix="bnfold-bench-") as workdir:
        original_path, source, model, original_bytes = _materialize(original, workdir, "original.onnx")
        label = str(original_path) if not isinstance(original, onnx.ModelProto) else "<in-memory model>"
        shapes = resolve_shapes(label, model, input_shapes)
        check_input_bytes(label, model, shapes)  # before anything runs
        before = ModelFigures.of(model_stats(model), original_bytes)
        if folded is None:
            # A model we loaded ourselves may be folded in place; one the caller gave us may not.
            result = fold(source, rules, in_place=not isinstance(original, onnx.ModelProto))
            folded_path = Path(workdir) / "folded.onnx"
            lazy = None if isinstance(source, onnx.ModelProto) else source
            folded_bytes = write_model(result.model, folded_path, external_data=bool(lazy and lazy.data_files),
                                       source=lazy)
            assert result.after is not None, "fold counts it"
            after, folds, folded_label = ModelFigures.of(result.after, folded_bytes), len(result.folds), None
            del result
        else:
            folded_path, _, other, folded_bytes = _materialize(folded, workdir, "folded.onnx")
            folded_label = str(folded_path) if not isinstance(folded, onnx.ModelProto) else "<in-memory folded model>"
            interface.check_interface(label, model, folded_label, other, shapes, outputs=options.check_outputs)
            checked_interface = ("same inputs and outputs as the original" if options.check_outputs
                                 else "same inputs as the original (outputs not compared)")
            after, folds = ModelFigures.of(model_stats(other), folded_bytes), None
            del other
        del model, source
        return run_bench(original_path, folded_path, before=before, after=after, folds=folds, input_shapes=input_shapes,
                         seed=seed, options=options, original_label=label, folded_label=folded_label, checked=True,
                         interface_note=FOLDED_HERE if folded is None else checked_interface)


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
    interface_note: str = FOLDED_HERE,
) -> BenchResult:
    """Measure two model files already on disk (``bench`` and ``optimize --bench`` end here). The
    output check runs here (in the child) whoever called; ``folded_label`` None means the folded
    model was made in memory from ``original``; ``interface_note`` says how ``folded`` is known to
    have ``original``'s interface (``checks["interface"]``)."""
    import onnxruntime as ort

    if not checked:
        options = options.checked()
    assert options.provider is not None, "checked() resolves the provider"
    label = original_label or str(original)
    start = time.perf_counter()
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
        "rounds": options.rounds,
        "check_outputs": options.check_outputs,
    }
    ended = child.run(WORKER, request, on_event=options.on_progress)
    if not ended.ok or ended.result is None:  # (ok: there is a result)
        raise BackendError(f"{label}: latency not measured: "
                          f"{ended.failure(f'the measuring process failed (exit {ended.returncode})')}")
    raw = ended.result
    if raw.get("error"):
        raise BackendError(f"{label}: latency not measured: {raw['error']}")
    check = raw["outputs_check"]
    if check.get("differences"):
        raise ModelError(interface.outputs_refusal(folded_label or f"{label} folded in memory", label,
                                                    check["differences"]))
    return BenchResult(
        original=label, folded=folded_label, folds=folds, before=before, after=after, provider=options.provider,
        threads=options.threads, inputs=raw["inputs"], seed=seed, warmup=options.warmup, runs=options.runs,
        time_budget=options.time_budget, rounds=options.rounds, onnxruntime=ort.__version__,
        settings=[SettingResult.from_raw(s) for s in raw["settings"]], seconds=time.perf_counter() - start,
        checks={"interface": interface_note, "outputs": _outputs_check(check)},
    )


def _outputs_check(check: dict) -> dict:
    """``BenchResult.checks["outputs"]`` from the child's output check."""
    if not check["checked"]:
        return {"checked": False, "reason": "--no-check-outputs"}
    keep = ("name", "dtype", "shape", "max_abs", "max_rel", "atol", "rtol", "passed")
    return {"checked": True, "backend": check["backend"],
            "outputs": [{k: c[k] for k in keep} for c in check["outputs"]]}


def _materialize(model, workdir: str, name: str) -> tuple[Path, ModelFile | onnx.ModelProto, onnx.ModelProto, int]:
    """A file for ``model`` (a path stays itself; a ModelProto is written to ``workdir``), the model
    to fold (a path read lazily into a ModelFile: weights stay on disk, as in ``optimize``; a
    ModelProto as given), its ModelProto, and its bytes on disk."""
    from ..io import ModelFile, side_file

    if isinstance(model, onnx.ModelProto):
        path = child.model_file(model, workdir, name)
        return path, model, model, _bytes_on_disk(path, [side_file(path)])
    source = ModelFile.read(model, lazy=True)
    return Path(model), source, source.proto, source.file_bytes


def _bytes_on_disk(path: Path, data_files: list[Path]) -> int:
    return sum(f.stat().st_size for f in [path, *data_files] if f.exists())
