"""bnfold against the tools users would otherwise pick, on one corpus, in one reproducible run.

    pip install -e '.[bench]'                      # peers, torch, torchvision (never in .ci/run)
    python bench/compare.py --corpus /path/to/corpus          # full run (30-60 min on 2 cores)
    python bench/compare.py --only bnfold --models resnet50 chain_5000 --force
    python bench/compare.py --render-only          # docs/BENCHMARKS.md again from docs/benchmarks.json

Every tool runs as a whole separate process per repeat (``bench/tools/*_tool.py IN OUT``, or the
``bnfold optimize IN -o OUT --no-validate`` command), one at a time, never in parallel: the wall
time of that process (imports included: what a user waits for) and its peak resident memory
(``ru_maxrss`` from ``os.wait4``; it covers the process's own children) are recorded. The output
is then counted (BatchNormalization left, nodes) and compared with the original by
``bnfold.validation.validate`` (both models in onnxruntime at ORT_DISABLE_ALL, in a child
process, seeded random inputs). Results are cached per (model, tool) in the JSON: a run
resumes where the last one stopped; ``--force`` measures again. The Markdown is rendered from
the JSON only.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TOOLS_DIR = BENCH / "tools"
sys.path.insert(0, str(BENCH))

SCHEMA = 1
CHAINS = (100, 1000, 5000, 20000)
#: The exported torchvision models (bench/export_corpus.py), the last one with untrained BN statistics.
from export_corpus import MODELS as TORCHVISION  # noqa: E402  (torch is imported only when exporting)
#: The "model" every tool also runs on to show its fixed cost (imports, start-up): one Conv+BN pair.
BASELINE = "chain_1"
LATENCY_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0")
#: Statuses that are re-decided on every run instead of being cached.
TRANSIENT = {"skipped", "not installed", "missing model"}


@dataclass(frozen=True)
class Tool:
    name: str
    requires: tuple[str, ...]     # modules the tool imports (checked before running it)
    recipe: str                   # what it runs, for the Markdown
    script: str | None = None     # bench/tools/<script>; None: the bnfold CLI
    peer: bool = True             # False: bnfold itself and the load+save floor

    def command(self, src: Path, dst: Path) -> list[str]:
        if self.script is None:
            return [*bnfold_cli(), "optimize", str(src), "-o", str(dst), "--no-validate"]
        return [sys.executable, str(TOOLS_DIR / self.script), str(src), str(dst)]


def bnfold_cli() -> list[str]:
    """The ``bnfold`` command installed beside this interpreter (what a user runs)."""
    exe = Path(sys.executable).with_name("bnfold")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from bnfold.cli import main; main()"]


TOOLS: dict[str, Tool] = {t.name: t for t in (
    Tool("bnfold", ("bnfold",), "`bnfold optimize IN -o OUT --no-validate` (the installed command)", peer=False),
    Tool("onnxoptimizer", ("onnxoptimizer", "onnxsim"),
         "`onnxoptimizer.optimize(m, ['eliminate_identity', 'fuse_bn_into_conv'])`, then "
         "`onnxsim.simplify(m, perform_optimization=False)` to constant-fold the arithmetic the pass inserts",
         "onnxoptimizer_tool.py"),
    Tool("onnxsim", ("onnxsim",), "`onnxsim.simplify(m)` with its defaults (its own optimizer passes include "
         "fuse_bn_into_conv; check_n=0)", "onnxsim_tool.py"),
    Tool("onnxslim", ("onnxslim",), "`onnxslim.slim(IN, output_model=OUT)` with its defaults", "onnxslim_tool.py"),
    Tool("ort-offline", ("onnxruntime",), "onnxruntime `InferenceSession` at `ORT_ENABLE_BASIC` with "
         "`optimized_model_filepath=OUT` (CPU provider)", "ort_offline_tool.py"),
    Tool("onnxscript-rules", ("onnxscript", "onnx_ir"), "`onnx_ir.load`, `onnxscript.rewriter.rewrite` with the "
         "three `fuse_batchnorm_into_{conv,conv_transpose,gemm}_rule`s, `onnx_ir.save`", "onnxscript_rules_tool.py"),
    Tool("onnxscript-optimizer", ("onnxscript", "onnx_ir"), "`onnx_ir.load`, `onnxscript.optimizer.optimize` "
         "with its defaults (constant folding + default rewrite rules, BN fusion among them), `onnx_ir.save`",
         "onnxscript_optimizer_tool.py"),
    Tool("loadsave", ("onnx",), "`onnx.save(onnx.load(IN), OUT)`: the floor, not a peer", "loadsave_tool.py",
         peer=False),
)}
PEERS = [name for name, tool in TOOLS.items() if tool.peer]


# -- models ------------------------------------------------------------------------------------


@dataclass
class Model:
    name: str
    group: str            # torchvision | light | chain | baseline
    path: Path
    pairs: int | None = None
    info: dict = field(default_factory=dict)


def chain_pairs(name: str) -> int | None:
    m = re.fullmatch(r"chain_(\d+)", name)
    return int(m.group(1)) if m else None


def all_model_names(chains: tuple[int, ...]) -> list[tuple[str, str]]:
    from light_zoo import light_paths

    names = [(BASELINE, "baseline")]
    names += [(n, "torchvision") for n in TORCHVISION]
    names += [(p.stem, "light") for p in light_paths()]
    names += [(f"chain_{n}", "chain") for n in sorted(chains)]
    return names


def prepare_models(selected: list[tuple[str, str]], corpus: Path, work: Path, log) -> list[Model]:
    """Paths of the selected models, making the ones that can be made (chains, light zoo, exports)."""
    models = []
    missing_tv = [n for n, g in selected if g == "torchvision" and not (corpus / f"{n}.onnx").exists()]
    if missing_tv:
        if importlib.util.find_spec("torch") and importlib.util.find_spec("torchvision"):
            log(f"exporting {len(missing_tv)} torchvision model(s) into {corpus} ...")
            subprocess.run([sys.executable, str(BENCH / "export_corpus.py"), str(corpus), *missing_tv], check=False,
                           stdout=subprocess.DEVNULL)
        else:
            log(f"torch/torchvision not importable: cannot export {', '.join(missing_tv)} (pip install '.[bench]')")
    light_dir, chain_dir = work / "models" / "light", work / "models" / "chains"
    if any(g == "light" for _, g in selected) and not all((light_dir / f"{n}.onnx").exists()
                                                         for n, g in selected if g == "light"):
        from light_zoo import write_light

        write_light(light_dir)
    for name, group in selected:
        pairs = chain_pairs(name)
        if pairs is not None:
            path = chain_dir / f"{name}.onnx"
            if not path.exists():
                from make_chains import write_chain

                write_chain(pairs, chain_dir)
        elif group == "light":
            path = light_dir / f"{name}.onnx"
        else:
            path = corpus / f"{name}.onnx"
        models.append(Model(name, group, path, pairs))
    return models


def graphs_of(model):
    """The main graph, every subgraph and every function body of an onnx model."""
    import onnx

    stack = [model.graph, *model.functions]
    while stack:
        g = stack.pop()
        yield g
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                stack.extend(attr.graphs)


def count_model(path: Path, weights: bool = False) -> dict:
    """BN and node counts (all graphs and functions); with ``weights``, the bytes of constant tensors."""
    import numpy as np
    import onnx

    model = onnx.load(str(path))
    bn = nodes = 0
    weight_bytes = 0
    for g in graphs_of(model):
        for node in g.node:
            nodes += 1
            bn += node.op_type == "BatchNormalization"
            if weights and node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.type == onnx.AttributeProto.TENSOR:
                        weight_bytes += _tensor_bytes(attr.t)
        if weights and hasattr(g, "initializer"):
            weight_bytes += sum(_tensor_bytes(t) for t in g.initializer)
    info = {"bn": bn, "nodes": nodes, "file_bytes": path.stat().st_size}
    if weights:
        info["weight_bytes"] = weight_bytes
        info["opset"] = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        info["ir_version"] = model.ir_version
    del model, np
    return info


def _tensor_bytes(t) -> int:
    import numpy as np
    from onnx import helper

    n = math.prod(t.dims)
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except Exception:  # string or exotic types
        itemsize = 1
    return n * itemsize


# -- measuring one process ---------------------------------------------------------------------


@dataclass
class RunResult:
    seconds: float
    peak_bytes: int
    returncode: int
    timed_out: bool
    stderr_tail: str
    others_cores: float | None   # average cores busy with other processes during the run
    cpu_seconds: float = 0.0


class Launcher:
    """The small process (bench/launcher.py) that forks, times and reaps every measured tool run.

    Started before the driver loads anything, so a tool's reported peak memory is its own (see
    launcher.py for why the driver cannot fork the tools itself).
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(BENCH / "launcher.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        hello = json.loads(self.proc.stdout.readline())
        self.own_peak_bytes = hello["launcher_peak_bytes"]

    def run(self, cmd: list[str], timeout: float, log_dir: Path) -> RunResult:
        self.proc.stdin.write(json.dumps({"cmd": cmd, "timeout": timeout, "log_dir": str(log_dir)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the launcher process died")
        return RunResult(**json.loads(line))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def failure_message(run: RunResult, timeout: float) -> tuple[str, str]:
    if run.timed_out:
        return "timeout", f"did not finish within {timeout:g} s"
    if run.returncode < 0:
        try:
            name = signal.Signals(-run.returncode).name
        except ValueError:
            name = f"signal {-run.returncode}"
        return "failed", f"killed by {name}" + (f": {run.stderr_tail}" if run.stderr_tail else "")
    return "failed", f"exit {run.returncode}: {run.stderr_tail or 'no message'}"


# -- one (model, tool) measurement --------------------------------------------------------------


def measure(model: Model, tool: Tool, args, work: Path, launcher: Launcher, log) -> dict:
    out_dir = work / "out" / model.name
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / f"{tool.name}.onnx"
    log_dir = work / "logs" / model.name / tool.name
    record: dict = {"status": "ok", "measured": _now()}
    runs: list[RunResult] = []
    target = args.repeats
    while len(runs) < target:
        if dst.exists():
            dst.unlink()
        run = launcher.run(tool.command(model.path, dst), args.timeout, log_dir)
        runs.append(run)
        log(f"    run {len(runs)}: {run.seconds:.2f} s, peak {run.peak_bytes / 2**20:.0f} MB"
            + ("" if run.returncode == 0 and not run.timed_out else f" [{failure_message(run, args.timeout)[1]}]"))
        if run.returncode != 0 or run.timed_out:
            record["status"], record["message"] = failure_message(run, args.timeout)
            if len(runs) > 1:
                record["message"] = f"run {len(runs)}: {record['message']}"
            break
        if run.returncode == 0 and not dst.exists():
            record["status"], record["message"] = "failed", "exit 0 but no output file written"
            break
        if len(runs) == 1 and run.seconds > args.long:
            target = 1   # long runs are measured once
    record["times"] = [round(r.seconds, 4) for r in runs]
    record["peaks"] = [r.peak_bytes for r in runs]
    others = [r.others_cores for r in runs if r.others_cores is not None]
    record["others_cores"] = round(max(others), 3) if others else None
    record["cpu_seconds"] = [round(r.cpu_seconds, 3) for r in runs]
    if record["status"] != "ok":
        return record
    record["time"] = statistics.median(record["times"])
    record["peak_bytes"] = max(record["peaks"])
    record.update({"bn_left": None, "nodes": None})
    try:
        counted = count_model(dst)
        record.update(bn_left=counted["bn"], nodes=counted["nodes"], file_bytes=counted["file_bytes"])
    except Exception as exc:  # an output onnx cannot read is a result too
        record["status"], record["message"] = "failed", f"output unreadable: {' '.join(str(exc).split())[:300]}"
        return record
    record["errors"] = compare_outputs(model.path, dst, args.validate_timeout)
    if model.pairs is not None:
        record["errors"]["vs_float64"] = chain_float64_errors(model, dst)
    if tool.name == "bnfold":
        record["phases"] = bnfold_phases(model.path, out_dir / "bnfold.phases.onnx", args.timeout)
    if not args.keep_outputs and not (tool.name == "bnfold" and model.name in LATENCY_MODELS):
        dst.unlink(missing_ok=True)
    return record


def compare_outputs(original: Path, output: Path, timeout: float) -> dict:
    from bnfold.validation import validate

    try:
        result = validate(str(original), str(output), timeout=timeout)
    except Exception as exc:  # a harness problem must not end the run; it is recorded instead
        return {"error": f"validate raised {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
    if result.error or not result.outputs:
        return {"error": result.error or "no outputs compared"}
    outs = result.outputs
    return {
        "max_abs": max(o.max_abs for o in outs),
        "max_rel": max(o.max_rel for o in outs),
        "passed": result.passed,
        "max_ref": max(o.max_ref for o in outs),
        "backend": result.backend,
        "outputs": len(outs),
    }


_EXACT: dict[str, tuple] = {}


def chain_float64_errors(model: Model, output: Path) -> dict:
    """Max abs distance of ``output`` (run in float32) and of the float32 original from the chain's
    exact float64 result, on one seeded input. Only chains have a cheap exact answer."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from make_chains import exact_output

    def run(path: Path, x):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    try:
        if model.name not in _EXACT:
            x = np.random.default_rng(0).standard_normal((1, 8, 4, 4)).astype(np.float32)
            exact = exact_output(onnx.load(str(model.path)), x)
            _EXACT[model.name] = (x, exact, float(np.abs(run(model.path, x) - exact).max()))
        x, exact, original = _EXACT[model.name]
        return {"max_abs": float(np.abs(run(output, x) - exact).max()), "original_max_abs": original,
                "peak": float(np.abs(exact).max())}
    except Exception as exc:  # an output onnxruntime cannot run
        return {"error": " ".join(str(exc).split())[:300]}


def bnfold_phases(src: Path, dst: Path, timeout: float) -> dict | None:
    """bnfold's own load/fold/save split (from ``--json``), from one extra, untimed run."""
    cmd = TOOLS["bnfold"].command(src, dst) + ["--json"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return json.loads(proc.stdout).get("seconds")
    except (subprocess.TimeoutExpired, json.JSONDecodeError, AttributeError):
        return None
    finally:
        dst.unlink(missing_ok=True)


# -- latency ------------------------------------------------------------------------------------


def measure_latency(model: Model, work: Path, args, log) -> dict:
    folded = work / "out" / model.name / "bnfold.onnx"
    if not folded.exists():
        return {"unavailable": f"no bnfold output for {model.name} (run the bnfold tool on it first)"}
    cmd = [*bnfold_cli(), "bench", str(model.path), str(folded), "--json"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.latency_timeout)
    except subprocess.TimeoutExpired:
        return {"unavailable": f"bnfold bench did not finish within {args.latency_timeout:g} s"}
    if proc.returncode != 0:
        tail = _tail_text(proc.stderr)
        if "No such command" in proc.stderr:
            return {"unavailable": "bnfold bench not available in this bnfold (no 'bench' command)"}
        return {"unavailable": f"bnfold bench failed (exit {proc.returncode}): {tail}"}
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"unavailable": "bnfold bench --json printed no JSON"}
    for setting in data.get("settings", []):
        setting.pop("raw", None)   # per-run latencies: kept out of the committed JSON
    data["measured"] = _now()
    return data


def _tail_text(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no message"


# -- machine and versions -----------------------------------------------------------------------


def machine_info() -> dict:
    from importlib import metadata

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    versions = {}
    for dist in ("bnfold", "onnx", "onnxruntime", "onnx-graphsurgeon", "numpy", "protobuf", "onnxoptimizer",
                 "onnxsim", "onnxslim", "onnxscript", "onnx-ir", "torch", "torchvision"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "gpu": None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "bnfold_source": bnfold_source(),
    }


def bnfold_source() -> dict:
    spec = importlib.util.find_spec("bnfold")
    if not spec or not spec.origin:
        return {}
    src = Path(spec.origin).parent
    info: dict = {"path": str(src)}
    try:
        info["commit"] = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                                        text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True).stdout.strip()
        info["dirty"] = bool(dirty)
    except (subprocess.CalledProcessError, FileNotFoundError):
        pass
    return info


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# -- JSON -----------------------------------------------------------------------------------------


def load_json(path: Path) -> dict:
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("schema") == SCHEMA:
            return data
    return {"schema": SCHEMA, "models": {}, "results": {}, "latency": {}}


def save_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False, allow_nan=True) + "\n")
    tmp.replace(path)


def earlier_failure(data: dict, model: Model, tool: str) -> str | None:
    """For a chain: the first smaller chain on which ``tool`` timed out or failed."""
    if model.pairs is None or model.group != "chain":
        return None
    smaller = sorted((chain_pairs(n), n) for n in data["results"]
                     if chain_pairs(n) is not None and n != BASELINE and chain_pairs(n) < model.pairs)
    for pairs, name in smaller:
        rec = data["results"].get(name, {}).get(tool)
        if rec and rec["status"] in ("timeout", "failed"):
            return f"skipped after {rec['status']} at N={pairs:,}"
    return None


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--corpus", type=Path, default=None,
                   help="folder of the torchvision exports (NAME.onnx); missing ones are exported when torch is "
                        "importable (default: WORK/corpus)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bnfold-bench",
                   help="scratch folder: generated models, tool outputs, logs (default: %(default)s)")
    p.add_argument("--json", dest="json_path", type=Path, default=ROOT / "docs" / "benchmarks.json")
    p.add_argument("--md", dest="md_path", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    p.add_argument("--only", nargs="+", choices=list(TOOLS), metavar="TOOL",
                   help=f"run only these tools ({', '.join(TOOLS)})")
    p.add_argument("--models", nargs="+", metavar="NAME",
                   help="run only these models (names as in the tables; groups: torchvision, light, chain)")
    p.add_argument("--chains", nargs="+", type=int, default=list(CHAINS), metavar="N",
                   help="chain sizes (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="measure again what the JSON already holds")
    p.add_argument("--repeats", type=int, default=3, help="runs per (model, tool); the median is reported")
    p.add_argument("--long", type=float, default=20.0,
                   help="a first run longer than this many seconds is not repeated (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per tool run (default: %(default)s)")
    p.add_argument("--validate-timeout", type=float, default=900.0)
    p.add_argument("--latency-timeout", type=float, default=900.0)
    p.add_argument("--no-latency", action="store_true", help="skip the bnfold bench latency tables")
    p.add_argument("--keep-outputs", action="store_true", help="keep every tool's output model in WORK/out")
    p.add_argument("--render-only", action="store_true", help="only render the Markdown from the JSON")
    p.add_argument("--list", action="store_true", help="list models and tools, then exit")
    return p.parse_args(argv)


def _write_markdown(path: Path, rendered: str) -> None:
    """Write the rendered sections, keeping the file's hand-written tail (``render.HAND_WRITTEN``)."""
    old = path.read_text() if path.exists() else None
    path.write_text(with_hand_written(rendered, old))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.render_only:
        data = load_json(args.json_path)
        _write_markdown(args.md_path, render(data))
        print(f"rendered {args.md_path} from {args.json_path}")
        return 0
    names = all_model_names(tuple(args.chains))
    if args.list:
        for name, group in names:
            print(f"{group:12} {name}")
        print("tools:", ", ".join(TOOLS))
        return 0
    if args.models:
        wanted = set(args.models)
        unknown = wanted - {n for n, _ in names} - {g for _, g in names}
        if unknown:
            print(f"unknown model(s): {', '.join(sorted(unknown))} (see --list)", file=sys.stderr)
            return 2
        names = [(n, g) for n, g in names if n in wanted or g in wanted]
    tools = [TOOLS[t] for t in (args.only or TOOLS)]
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    corpus = args.corpus or work / "corpus"

    def log(msg: str) -> None:
        print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", flush=True)

    launcher = Launcher()   # first, while this process is still small
    data = load_json(args.json_path)
    data["machine"] = machine_info()
    data["machine"]["launcher_peak_bytes"] = launcher.own_peak_bytes
    data["settings"] = {"repeats": args.repeats, "long_run_s": args.long, "timeout_s": args.timeout,
                        "chains": sorted(args.chains), "validate_timeout_s": args.validate_timeout,
                        "recipes": {t.name: t.recipe for t in TOOLS.values()}}
    runs = data.setdefault("runs", [])
    runs.append({"started": _now(), "argv": sys.argv[1:] if argv is None else argv})
    models = prepare_models(names, corpus, work, log)
    installed = {t.name: all(importlib.util.find_spec(m) for m in t.requires) for t in tools}
    for model in models:
        if not model.path.exists():
            data["models"][model.name] = {"group": model.group, "missing": True}
            log(f"{model.name}: model missing ({model.path})")
            continue
        info = count_model(model.path, weights=True)
        info.update(group=model.group, pairs=model.pairs, path=str(model.path))
        data["models"][model.name] = info
        results = data["results"].setdefault(model.name, {})
        for tool in tools:
            cached = results.get(tool.name)
            if cached and cached["status"] not in TRANSIENT and not args.force:
                continue
            if not installed[tool.name]:
                results[tool.name] = {"status": "not installed", "message": f"needs {', '.join(tool.requires)}"}
                continue
            skip = earlier_failure(data, model, tool.name)
            if skip:
                results[tool.name] = {"status": "skipped", "message": skip}
                log(f"{model.name} / {tool.name}: {skip}")
                save_json(data, args.json_path)
                continue
            log(f"{model.name} / {tool.name}")
            results[tool.name] = measure(model, tool, args, work, launcher, log)
            rec = results[tool.name]
            log(f"  -> {rec['status']}" + (f": {rec.get('message')}" if rec.get("message") else
                f", BN {rec['bn_left']}, nodes {rec['nodes']}, err {rec['errors']}"))
            save_json(data, args.json_path)
    if not args.no_latency and "bnfold" in [t.name for t in tools]:
        for model in models:
            if model.name not in LATENCY_MODELS or not model.path.exists():
                continue
            cached = data["latency"].get(model.name)
            if cached and "unavailable" not in cached and not args.force:
                continue
            log(f"latency {model.name} (bnfold bench)")
            data["latency"][model.name] = measure_latency(model, work, args, log)
            save_json(data, args.json_path)
    launcher.close()
    runs[-1]["finished"] = _now()
    save_json(data, args.json_path)
    _write_markdown(args.md_path, render(data))
    log(f"wrote {args.json_path} and {args.md_path}")
    return 0


# -- Markdown ---------------------------------------------------------------------------------------

from render import render, with_hand_written  # noqa: E402  (the renderer lives beside this file)

if __name__ == "__main__":
    sys.exit(main())
