"""Child process of ``bnfold.latency.runner``: creates the sessions, times the runs, writes raw numbers.

Run as ``python -m bnfold.latency._worker REQUEST.json`` (``bnfold.child``). onnxruntime can crash
the process on some valid models, so nothing of this runs inside bnfold itself. Progress goes to
the parent as events (``child.Progress``: one JSON object per line on the process's original
stdout, everything else written to stdout going to stderr). The result (raw timings only: the
parent computes every statistic) is what ``main`` returns.

First, unless the request turns it off, the output check (``bnfold.latency.interface``): both
models run once on the seeded input, CPU, ``ORT_DISABLE_ALL``; every output of the original is
compared with the folded model's within ``tolerance_for(dtype)``. If any differs, nothing is
measured and the result says what differs (the parent refuses, naming the folded model).

Protocol, per setting (``disabled`` = ORT_DISABLE_ALL, ``default`` = onnxruntime's default level),
in rounds r = 0, 1, ... (a fresh session of each model per round: sessions of the same model
differ in latency by a persistent fraction of a percent, so the round is the statistical unit):

1. session creation: two sessions of each model, each timed, in ABBA order (original, folded,
   folded, original in even rounds; folded, original, original, folded in odd ones): the round's
   two session pairs are one ABBA block; the second session of each model is kept for the runs;
2. warm-up: ``warmup`` runs of each, interleaved, not timed;
3. timed pairs in alternating order (ABBA), the original first in the round's first pair in even
   rounds and the folded model in odd ones, until the round's quota (``ceil(runs / rounds)``
   pairs, at least 2, fewer in a last round that reaches ``runs``) or the round's deadline
   (``start + (r+1)·time_budget/rounds``), but at least 2 pairs (one ABBA block); then both
   sessions are released.

Rounds stop after ``rounds`` rounds, at ``runs`` pairs in all, or once ``time_budget`` seconds have
passed and at least ``min_pairs`` pairs were timed.

Every session sets ``session.force_spinning_stop=1``: onnxruntime's intra-op threads otherwise keep
spinning after a run, and with two sessions alive the idle one's spinning threads steal the CPU
from the one being timed (measured here: +55–75 % on a 2-core machine, on both sides alike).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np
import onnx

from .. import child
from ..compare import elementwise as compare
from ..runtime import CannotRun, error_text, make_inputs, strip_empty_trailing_outputs
from ..errors import BnfoldError
from ..io import ModelFile, write_model
from .interface import output_differences

#: Setting name → the graph optimization level it uses (None: leave onnxruntime's default).
LEVELS = {"disabled": "ORT_DISABLE_ALL", "default": None}
#: Session configuration entries every session gets (see the module docstring).
SESSION_CONFIG = {"session.force_spinning_stop": "1"}
#: Seconds between progress messages while timing.
PROGRESS_INTERVAL = 0.1


def _runnable_path(path: str, workdir: str, name: str) -> tuple[str, onnx.ModelProto]:
    """The model at ``path`` (its structure) and a file onnxruntime can load safely: ``path``
    itself, or a copy without declared-but-empty trailing outputs (onnxruntime crashes on some)
    when it had any. The copy's weights are copied from where they are, spans read as
    onnxruntime reads them (``bnfold.io``), never through ``onnx.load``."""
    source = ModelFile.read(path, check=False, lazy=True)  # the weights stay on disk
    model = source.proto
    if not strip_empty_trailing_outputs(model):  # nothing to strip: onnxruntime loads the file itself
        return path, model
    copy = os.path.join(workdir, name)
    write_model(model, copy, external_data=bool(source.data_files), source=source)
    return copy, model


def _options(setting: str, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    level = LEVELS[setting]
    if level is not None:
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    return options


def _create(path: str, options, providers: list[str]):
    import onnxruntime as ort

    start = time.perf_counter()
    session = ort.InferenceSession(path, options, providers=providers)
    return session, (time.perf_counter() - start) * 1e3


def _timed_run(session, feeds) -> float:
    start = time.perf_counter()
    session.run(None, feeds)
    return (time.perf_counter() - start) * 1e3


def _order(i: int) -> tuple[str, str]:
    return ("original", "folded") if i % 2 == 0 else ("folded", "original")


def _measure(setting: str, paths: dict[str, str], feeds, req: dict, progress: child.Progress) -> dict:
    options = _options(setting, req["threads"])
    providers = [req["provider"]] + (["CPUExecutionProvider"] if req["provider"] != "CPUExecutionProvider" else [])
    level = LEVELS[setting] or str(options.graph_optimization_level).rsplit(".", 1)[-1]
    rounds, runs, budget = req["rounds"], req["runs"], req["time_budget"]
    quota = max(2, -(-runs // rounds))
    creation: dict[str, list[float]] = {"original": [], "folded": []}
    latency: dict[str, list[float]] = {"original": [], "folded": []}
    first: list[str] = []
    round_of: list[int] = []
    used: list[str] = []
    start = time.perf_counter()
    reported = -1.0
    for r in range(rounds):
        sessions: dict[str, Any] = {}  # onnxruntime.InferenceSession (onnxruntime has no type stubs)
        for which in (*_order(r), *_order(r + 1)):
            progress.stage(f"creating a session of the {which} model ({setting}: {level})", setting=setting)
            sessions.pop(which, None)  # one live session per model at most
            try:
                sessions[which], ms = _create(paths[which], options, providers)
            except Exception as exc:
                raise CannotRun(f"onnxruntime cannot load the {which} model ({level}): {error_text(exc)}") from None
            creation[which].append(ms)
        used = sessions["original"].get_providers()
        deadline = start + (r + 1) * budget / rounds
        try:
            # One message per round, before the warm-up: the parent's wake-up lands on untimed runs.
            progress.stage(f"warming up and timing runs, round {r + 1} ({setting}: {level})", setting=setting)
            for i in range(req["warmup"]):
                for which in _order(i):
                    sessions[which].run(None, feeds)
            target = min(quota, runs - len(first))
            for i in range(target):
                order = _order(r + i)  # whatever disturbs a round's first run hits both models alike
                for which in order:
                    latency[which].append(_timed_run(sessions[which], feeds))
                first.append(order[0])
                round_of.append(r)
                now = time.perf_counter()
                if now - start - reported >= PROGRESS_INTERVAL:  # throttled: each message wakes the parent
                    progress.send("pair", setting=setting, pairs=len(first), runs=runs, elapsed=now - start,
                                  budget=budget)
                    reported = now - start
                if i >= 1 and now >= deadline:
                    break
        except Exception as exc:
            raise CannotRun(f"running the models failed ({level}): {error_text(exc)}") from None
        del sessions
        elapsed = time.perf_counter() - start
        if len(first) >= runs or (elapsed >= budget and len(first) >= req["min_pairs"]):
            break
    elapsed = time.perf_counter() - start
    progress.send("pair", setting=setting, pairs=len(first), runs=runs, elapsed=elapsed, budget=budget)
    return {
        "name": setting,
        "optimization_level": level,
        "providers": used,
        "session_config": {key: options.get_session_config_entry(key) for key in SESSION_CONFIG},
        "session_ms": creation,
        "latency_ms": latency,
        "first": first,
        "round": round_of,
        "stopped_by": "runs" if len(first) >= runs else "time budget",
        "seconds": elapsed,
    }


def _check_outputs(paths: dict[str, str], feeds, threads: int | None, progress: child.Progress) -> dict:
    """Both models once on ``feeds`` (CPU, ORT_DISABLE_ALL); every output of the original compared
    with the folded model's output of the same name (``compare``: ``tolerance_for(dtype)``)."""
    options = _options("disabled", threads)
    outputs: dict[str, dict] = {}
    for which in ("original", "folded"):
        progress.stage(f"checking the outputs of the {which} model (ORT_DISABLE_ALL)", setting=None)
        try:
            session, _ = _create(paths[which], options, ["CPUExecutionProvider"])
        except Exception as exc:
            raise CannotRun(f"onnxruntime cannot load the {which} model (ORT_DISABLE_ALL): {error_text(exc)}") from None
        try:
            outputs[which] = dict(zip((o.name for o in session.get_outputs()), session.run(None, feeds)))
        except Exception as exc:
            raise CannotRun(f"running the {which} model failed (ORT_DISABLE_ALL): {error_text(exc)}") from None
        del session
    comparisons = []
    for name, ref in outputs["original"].items():
        got = outputs["folded"].get(name)
        if got is None:
            comparisons.append({"name": name, "missing": True, "passed": False})
            continue
        ref, got = np.asarray(ref), np.asarray(got)  # ORT returns arrays for tensor outputs
        c = compare(name, ref, got, None, None)
        comparisons.append({**c, "folded_shape": list(got.shape), "folded_dtype": got.dtype.name})
    return {"checked": True, "backend": "onnxruntime (CPU, ORT_DISABLE_ALL)", "outputs": comparisons,
            "differences": output_differences(comparisons)}


def main(req: dict, progress: child.Progress) -> dict:
    """The raw timings (``settings``), the inputs and the output check, or ``error``."""
    result: dict = {"settings": []}
    try:
        progress.stage("loading the models", setting=None)
        workdir = os.path.dirname(req["result"])
        original_path, original = _runnable_path(req["original"], workdir, "original.runnable.onnx")
        folded_path, _ = _runnable_path(req["folded"], workdir, "folded.runnable.onnx")
        paths = {"original": original_path, "folded": folded_path}
        feeds = make_inputs(original, req["input_shapes"], req["seed"], req["original"])
        del original
        result["inputs"] = {k: list(v.shape) for k, v in feeds.items()}
        check = _check_outputs(paths, feeds, req["threads"], progress) if req["check_outputs"] else {"checked": False}
        result["outputs_check"] = check
        if not check.get("differences"):
            for setting in req["settings"]:
                result["settings"].append(_measure(setting, paths, feeds, req, progress))
    except (CannotRun, BnfoldError) as exc:  # BnfoldError: an unusable file or input shape
        result["error"] = str(exc)
    return result


if __name__ == "__main__":
    sys.exit(child.serve(main))
