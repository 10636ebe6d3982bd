"""Child process of ``bnfold.latency.runner``: creates the sessions, times the runs, writes raw numbers.

Run as ``python -m bnfold.latency._worker REQUEST.json``. onnxruntime can crash the process on
some valid models, so nothing of this runs inside bnfold itself. Progress goes to the parent as
one JSON object per line on the process's original stdout; everything else written to stdout
(native code included) is sent to stderr, so the progress stream stays parseable. The result
(raw timings only: the parent computes every statistic) is written to the request's result file.

Protocol, per setting (``disabled`` = ORT_DISABLE_ALL, ``default`` = onnxruntime's default level):

1. session creation: ``session_repeats`` sessions of each model, interleaved, timed one by one;
   the last one of each is kept;
2. warm-up: ``warmup`` runs of each, interleaved, not timed;
3. measured pairs: pair i runs the original first when i is even, the folded model first when i
   is odd (ABBA: order effects cancel), until ``runs`` pairs or until ``time_budget`` seconds have
   passed, whichever comes first, but never fewer than ``min_pairs``.

Every session sets ``session.force_spinning_stop=1``: onnxruntime's intra-op threads otherwise keep
spinning after a run, and with two sessions alive the idle one's spinning threads steal the CPU
from the one being timed (measured here: +55–75 % on a 2-core machine, on both sides alike).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import onnx

from .._validate_worker import CannotRun, _strip_empty_trailing_outputs, make_inputs
from ..errors import BnfoldError
from ..io import read_model, write_model

#: Setting name → the graph optimization level it uses (None: leave onnxruntime's default).
LEVELS = {"disabled": "ORT_DISABLE_ALL", "default": None}
#: Session configuration entries every session gets (see the module docstring).
SESSION_CONFIG = {"session.force_spinning_stop": "1"}
#: Seconds between progress messages while timing.
PROGRESS_INTERVAL = 0.1


class _Progress:
    """One JSON object per line to the parent; the last stage is also what a crash report names."""

    def __init__(self, stream):
        self.stream = stream

    def send(self, event: str, **fields) -> None:
        self.stream.write(json.dumps({"event": event, **fields}) + "\n")
        self.stream.flush()

    def stage(self, text: str, setting: str | None = None) -> None:
        self.send("stage", text=text, setting=setting)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


def _runnable_path(path: str, workdir: str, name: str) -> tuple[str, onnx.ModelProto]:
    """The model at ``path`` (its structure) and a file onnxruntime can load safely: ``path``
    itself, or a copy without declared-but-empty trailing outputs (onnxruntime crashes on some)
    when it had any. The copy's weights are copied from where they are, spans read as
    onnxruntime reads them (``bnfold.io``), never through ``onnx.load``."""
    model, data_files = read_model(path, check=False, lazy=True)  # the weights stay on disk
    if not _strip(model):
        return path, model
    copy = os.path.join(workdir, name)
    write_model(model, copy, external_data=bool(data_files), base_dir=Path(path).parent)
    return copy, model


def _output_count(graph: onnx.GraphProto | onnx.FunctionProto) -> int:
    total = 0
    for node in graph.node:
        total += len(node.output)
        for attr in node.attribute:
            total += sum(_output_count(g) for g in [*attr.graphs, *([attr.g] if attr.HasField("g") else [])])
    return total


def _strip(model: onnx.ModelProto) -> bool:
    """Strip empty trailing outputs everywhere; whether there were any."""
    graphs = [model.graph, *model.functions]
    before = sum(map(_output_count, graphs))
    for graph in graphs:
        _strip_empty_trailing_outputs(graph)
    return sum(map(_output_count, graphs)) != before


def _options(setting: str, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if LEVELS[setting] is not None:
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[setting])
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


def _measure(setting: str, paths: dict[str, str], feeds, req: dict, progress: _Progress) -> dict:
    options = _options(setting, req["threads"])
    providers = [req["provider"]] + (["CPUExecutionProvider"] if req["provider"] != "CPUExecutionProvider" else [])
    level = LEVELS[setting] or str(options.graph_optimization_level).rsplit(".", 1)[-1]
    sessions: dict[str, object] = {}
    creation: dict[str, list[float]] = {"original": [], "folded": []}
    for i in range(req["session_repeats"]):
        for which in ("original", "folded") if i % 2 == 0 else ("folded", "original"):
            progress.stage(f"creating a session of the {which} model ({setting}: {level})", setting)
            try:
                sessions[which], ms = _create(paths[which], options, providers)
            except Exception as exc:
                raise CannotRun(f"onnxruntime cannot load the {which} model ({level}): {_one_line(exc)}") from None
            creation[which].append(ms)
    used = sessions["original"].get_providers()
    runs = {"original": [], "folded": []}
    first: list[str] = []
    try:
        for i in range(req["warmup"]):
            for which in ("original", "folded") if i % 2 == 0 else ("folded", "original"):
                progress.stage(f"warming up the {which} model ({setting}: {level})", setting)
                sessions[which].run(None, feeds)
        progress.stage(f"timing runs ({setting}: {level})", setting)
        start = time.perf_counter()
        stopped_by, reported = "runs", -1.0
        while len(first) < req["runs"]:
            order = ("original", "folded") if len(first) % 2 == 0 else ("folded", "original")
            for which in order:
                runs[which].append(_timed_run(sessions[which], feeds))
            first.append(order[0])
            elapsed = time.perf_counter() - start
            over = elapsed >= req["time_budget"] and len(first) >= req["min_pairs"] and len(first) < req["runs"]
            if elapsed - reported >= PROGRESS_INTERVAL or over or len(first) == req["runs"]:
                # Throttled: every message wakes the parent, which then competes for the CPU.
                progress.send("pair", setting=setting, pairs=len(first), runs=req["runs"], elapsed=elapsed,
                              budget=req["time_budget"])
                reported = elapsed
            if over:
                stopped_by = "time budget"
                break
    except Exception as exc:
        raise CannotRun(f"running the models failed ({level}): {_one_line(exc)}") from None
    return {
        "name": setting,
        "optimization_level": level,
        "providers": used,
        "session_config": {key: options.get_session_config_entry(key) for key in SESSION_CONFIG},
        "session_ms": creation,
        "latency_ms": runs,
        "first": first,
        "stopped_by": stopped_by,
        "seconds": time.perf_counter() - start,
    }


def main(request_path: str) -> int:
    progress = _Progress(os.fdopen(os.dup(1), "w"))
    os.dup2(2, 1)  # stray prints (ours or native) go to stderr, never into the progress stream
    sys.stdout = sys.stderr
    with open(request_path) as fh:
        req = json.load(fh)
    result: dict = {"settings": []}
    try:
        progress.stage("loading the models")
        workdir = os.path.dirname(request_path)
        original_path, original = _runnable_path(req["original"], workdir, "original.runnable.onnx")
        folded_path, _ = _runnable_path(req["folded"], workdir, "folded.runnable.onnx")
        paths = {"original": original_path, "folded": folded_path}
        feeds = make_inputs(original, req["input_shapes"], req["seed"], req["original"])
        del original
        result["inputs"] = {k: list(v.shape) for k, v in feeds.items()}
        for setting in req["settings"]:
            result["settings"].append(_measure(setting, paths, feeds, req, progress))
    except (CannotRun, BnfoldError) as exc:  # BnfoldError: an unusable file or input shape
        result["error"] = str(exc)
    with open(req["result"], "w") as fh:
        json.dump(result, fh)
    progress.send("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
