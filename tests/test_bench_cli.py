"""``bnfold bench`` and ``bnfold optimize --bench``: what is measured, what is reported, how it fails.

Real measurements run on the small sample model with ``--runs 5 --warmup 1`` (the numbers are
noise at that size; the tests check the protocol and the report, never a speedup). Rendering of
verdicts is tested on synthetic timings, where the right answer is known. Every test that runs
a command hashes the input model before and after: bench never modifies it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result

import bnfold
import builders
from bnfold.cli import cli
from bnfold.latency import runner, stats

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
FAST = ("--runs", "5", "--warmup", "1")
BENCH_KEYS = {"original", "folded", "folds", "model", "runtime", "protocol", "settings", "seconds"}
SETTING_KEYS = {"name", "optimization_level", "meaning", "providers", "session_config", "pairs", "stopped_by", "seconds", "latency_ms",
                "speedup", "session_ms", "session_speedup", "raw"}
SEGFAULT = ("import json, os, signal; print(json.dumps({'event': 'stage', 'text': 'creating a session of the folded "
            "model (default: ORT_ENABLE_ALL)'}), flush=True); os.kill(os.getpid(), signal.SIGSEGV)")


def run(*args) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="bnfold", env={"COLUMNS": "200"})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_error_line(result: Result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnfold: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def sample(tmp_path):
    """A copy of models/resnet_stack.onnx (9 Conv+BN pairs, 31 nodes); its hash must not change."""
    src = Path(shutil.copy(MODELS_DIR / "resnet_stack.onnx", tmp_path / "resnet_stack.onnx"))
    before = sha256(src)
    yield src
    assert sha256(src) == before, "the input model was modified"


def check_setting(setting: dict, name: str, level: str, pairs: int) -> None:
    """One setting of the JSON: raw numbers > 0, and every figure recomputes from them."""
    assert set(setting) == SETTING_KEYS
    assert (setting["name"], setting["optimization_level"], setting["pairs"]) == (name, level, pairs)
    assert setting["providers"][0] == "CPUExecutionProvider"
    assert setting["session_config"] == {"session.force_spinning_stop": "1"}  # as the child's sessions report it
    raw = setting["raw"]
    for key in ("original_ms", "folded_ms"):
        assert len(raw[key]) == pairs and all(v > 0 for v in raw[key]), raw[key]
    assert raw["first"] == ["original", "folded"] * (pairs // 2) + ["original"] * (pairs % 2)  # ABBA
    for which in ("original", "folded"):
        summary = setting["latency_ms"][which]
        values = raw[f"{which}_ms"]
        assert summary["n"] == pairs
        assert summary["median"] == pytest.approx(np.median(values))
        assert summary["p90"] == pytest.approx(np.percentile(values, 90))
        assert summary["p99"] == pytest.approx(np.percentile(values, 99))
        assert len(raw[f"session_{which}_ms"]) == 5 and all(v > 0 for v in raw[f"session_{which}_ms"])
        assert setting["session_ms"][which]["median"] == pytest.approx(np.median(raw[f"session_{which}_ms"]))
    for key, original, folded in (("speedup", raw["original_ms"], raw["folded_ms"]),
                                  ("session_speedup", raw["session_original_ms"], raw["session_folded_ms"])):
        sp = setting[key]
        assert sp["ratio"] == pytest.approx(np.median(original) / np.median(folded))
        assert 0 < sp["ci_low"] <= sp["ratio"] <= sp["ci_high"]
        assert sp["verdict"] == stats.verdict(sp["ci_low"], sp["ci_high"])
        again = stats.speedup(original, folded, seed=0)  # anyone can recompute the interval from the raw runs
        assert (again.low, again.high) == (sp["ci_low"], sp["ci_high"])


def check_document(doc: dict, pairs: int = 5) -> None:
    assert set(doc) == BENCH_KEYS
    assert [s["name"] for s in doc["settings"]] == ["disabled", "default"]
    check_setting(doc["settings"][0], "disabled", "ORT_DISABLE_ALL", pairs)
    check_setting(doc["settings"][1], "default", "ORT_ENABLE_ALL", pairs)
    assert doc["runtime"]["provider"] == "CPUExecutionProvider"
    assert doc["protocol"]["inputs"] == {"input": [1, 3, 32, 32]}


# ---------------------------------------------------------------------------------------------
# bnfold bench: measurements
# ---------------------------------------------------------------------------------------------


def test_bench_folds_in_memory_and_reports_both_settings(sample):
    result = run("bench", sample, *FAST, "--json")

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    check_document(doc)
    assert (doc["original"], doc["folded"], doc["folds"]) == (str(sample), None, 9)
    assert doc["model"]["before"] == {"nodes": 31, "parameters": 78714, "file_bytes": sample.stat().st_size}
    assert doc["model"]["after"]["nodes"] == 22
    assert doc["model"]["after"]["parameters"] < 78714
    assert 0 < doc["model"]["after"]["file_bytes"] < sample.stat().st_size


def test_bench_with_a_given_folded_model(sample, tmp_path):
    folded = tmp_path / "folded.onnx"
    onnx.save(bnfold.fold(onnx.load(sample)).model, folded)

    result = run("bench", sample, folded, *FAST, "--json", "--threads", "1")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    check_document(doc)
    assert (doc["folded"], doc["folds"], doc["runtime"]["threads"]) == (str(folded), None, 1)
    assert doc["model"]["after"]["file_bytes"] == folded.stat().st_size
    assert doc["model"]["after"]["nodes"] == len(onnx.load(folded).graph.node) == 22


def test_bench_table(sample):
    result = run("bench", sample, *FAST)

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"bnfold bench {sample} vs folded in memory (9 folds)" in out
    for fragment in ("Latency per run (ms)", "median", "p90", "p99", "Speedup = median(original) / median(folded)",
                     "disabled (ORT_DISABLE_ALL)", "default (ORT_ENABLE_ALL)", "fuses Conv+BN itself"):
        assert fragment in out, fragment
    rows = [[c.strip() for c in line.strip().strip("│").split("│")] for line in out.splitlines() if "│" in line]
    nodes = [r for r in rows if r[0] == "nodes"]
    assert nodes == [["nodes", "31", "22", "-29.0%"]]
    speedups = [r for r in rows if r[1] in ("run", "session")]
    assert len(speedups) == 4
    for row in speedups:
        assert row[2].endswith("×") and row[3].startswith("[")
        low, high = (float(v) for v in row[3].strip("[]").split(","))
        assert row[4] == stats.verdict(low, high) or (low <= 1 <= high and row[4] == stats.NO_DIFFERENCE)


def test_python_api_progress_events_and_time_budget(tmp_path):
    model = builders.conv_bn_model()
    kept = model.SerializeToString()
    events: list[dict] = []
    options = bnfold.BenchOptions(runs=100_000, time_budget=0.2, warmup=1, session_repeats=2,
                                  on_progress=events.append)

    result = bnfold.bench(model, options=options)

    assert model.SerializeToString() == kept, "bench changed the caller's model"
    assert (result.original, result.folded, result.folds) == ("<in-memory model>", None, 1)
    assert [s.name for s in result.settings] == ["disabled", "default"]
    for s in result.settings:
        assert s.stopped_by == "time budget"
        assert runner.MIN_PAIRS <= len(s.first) < 100_000
        assert s.seconds >= 0.2
        assert len(s.session_original_ms) == 2
        last = [e for e in events if e["event"] == "pair" and e["setting"] == s.name][-1]
        assert last["pairs"] == len(s.first) and last["elapsed"] >= 0.2
    stages = [e["text"] for e in events if e["event"] == "stage"]
    assert stages[0] == "loading the models"
    assert any("session of the folded model (default: ORT_ENABLE_ALL)" in t for t in stages)
    assert events[-1] == {"event": "done"}
    assert result.to_dict()["settings"][0]["stopped_by"] == "time budget"


def test_model_onnxruntime_crashes_on_unless_cleaned_is_measured(tmp_path):
    """opset-9 BN declared with empty optional outputs: onnxruntime segfaults on it as written;
    the worker strips the empty outputs (same semantics) as validation does."""
    src = tmp_path / "bn9.onnx"
    onnx.save(builders.conv_bn_model(opset=9, bn_extra_outputs="empty"), src)
    before = sha256(src)

    result = run("bench", src, *FAST, "--json")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [s["pairs"] for s in doc["settings"]] == [5, 5]
    assert sha256(src) == before


def test_progress_bar_follows_the_events():
    from io import StringIO

    from rich.console import Console

    from bnfold.latency.report import progress_bar

    out = StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with progress_bar(console, runs=10) as on_event:
        on_event({"event": "stage", "setting": "disabled", "text": "creating a session of the original model"})
        on_event({"event": "pair", "setting": "disabled", "pairs": 7, "runs": 10, "elapsed": 0.1, "budget": 10})
        on_event({"event": "done"})
        console.file.flush()
    assert "7 pairs" in out.getvalue()


# ---------------------------------------------------------------------------------------------
# bnfold bench: rendering verdicts (synthetic timings: the answer is known)
# ---------------------------------------------------------------------------------------------


def synthetic_result(original_ms: list[float], folded_ms: list[float]) -> runner.BenchResult:
    raw = {"latency_ms": {"original": original_ms, "folded": folded_ms},
           "session_ms": {"original": [5.0, 5.1, 4.9], "folded": [5.0, 5.1, 4.9]},
           "first": ["original", "folded"] * (len(original_ms) // 2), "stopped_by": "time budget", "seconds": 10.0,
           "providers": ["CPUExecutionProvider"], "session_config": {}}
    settings = [runner.SettingResult.from_raw({**raw, "name": name, "optimization_level": level}, seed=0)
                for name, level in (("disabled", "ORT_DISABLE_ALL"), ("default", "ORT_ENABLE_ALL"))]
    figures = runner.ModelFigures(10, 100, 1000)
    return runner.BenchResult("a.onnx", "b.onnx", None, figures, figures, "CPUExecutionProvider", None,
                              {"input": [1, 3]}, 0, 1, 100, 10.0, 3, "1.32.0", settings)


def rendered(result: runner.BenchResult) -> str:
    from io import StringIO

    from rich.console import Console

    from bnfold.latency.report import render_bench

    out = StringIO()
    render_bench(result, Console(file=out, width=200, highlight=False))
    return out.getvalue()


def test_render_names_a_measured_speedup_with_its_interval():
    rng = np.random.default_rng(0)
    folded = list(rng.lognormal(0, 0.02, 40))
    text = rendered(synthetic_result([2 * v for v in folded], folded))
    assert text.count("2.000×") == 2 and text.count("[2.000, 2.000]") == 2
    assert text.count("folded faster") == 2
    assert text.count("1.000×") == 2  # identical session timings
    assert text.count(stats.NO_DIFFERENCE) == 2
    assert "stopped by the time budget after 40 pairs" in text
    assert "bnfold bench a.onnx vs b.onnx" in text


def test_render_says_no_measurable_difference_when_the_interval_holds_one():
    rng = np.random.default_rng(1)
    text = rendered(synthetic_result(list(rng.lognormal(0, 0.3, 40)), list(rng.lognormal(0, 0.3, 40))))
    assert "faster" not in text and "slower" not in text
    assert text.count(stats.NO_DIFFERENCE) == 4


# ---------------------------------------------------------------------------------------------
# bnfold bench --plot
# ---------------------------------------------------------------------------------------------


def test_plot_writes_a_png(sample, tmp_path):
    png = tmp_path / "latency.png"

    result = run("bench", sample, *FAST, "--plot", png)

    assert result.exit_code == 0, result.output
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1210, 495)  # 11 x 4.5 inches at 110 dpi
    assert len(data) > 20_000
    assert f"Plot: {png}" in result.stdout


def test_plot_without_matplotlib_fails_before_measuring(sample, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setattr(runner, "bench", lambda *a, **k: pytest.fail("measured although --plot cannot work"))

    result = run("bench", sample, "--plot", tmp_path / "x.png")

    assert_one_error_line(result, "--plot needs matplotlib: pip install 'bnfold[plot]'")
    assert not (tmp_path / "x.png").exists()


def test_plot_needs_a_png_name(sample, tmp_path):
    assert_one_error_line(run("bench", sample, "--plot", tmp_path / "x.txt"), "x.txt", "PNG")
    assert_one_error_line(run("bench", sample, "--plot", tmp_path / "missing" / "x.png"), "does not exist")


# ---------------------------------------------------------------------------------------------
# bnfold bench: errors are one line, exit 2
# ---------------------------------------------------------------------------------------------


def test_not_a_model_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a model")
    assert_one_error_line(run("bench", bad, *FAST), str(bad))
    assert_one_error_line(run("bench", tmp_path / "missing.onnx", *FAST), "missing.onnx")


def test_unknown_provider_is_one_error_line(sample):
    line = assert_one_error_line(run("bench", sample, "--provider", "NoSuchExecutionProvider"),
                                 "unknown execution provider 'NoSuchExecutionProvider'", "CPUExecutionProvider")
    assert "available here" in line


def test_provider_names_resolve_case_insensitively_without_the_suffix():
    assert runner.resolve_provider("cpu") == runner.resolve_provider("CPUExecutionProvider") == "CPUExecutionProvider"
    assert runner.resolve_provider(None) == "CPUExecutionProvider"


@pytest.mark.parametrize("args, fragment", [
    (("--runs", "4"), "--runs"),
    (("--time-budget", "0"), "--time-budget"),
    (("--threads", "0"), "--threads"),
    (("--input-shape", "nope=1x3"), "nope"),
    (("--input-shape", "input=1xx3"), "bad input shape"),
])
def test_bad_options_are_one_error_line(sample, args, fragment):
    assert_one_error_line(run("bench", sample, *args), fragment)


def test_folded_model_with_other_inputs_is_refused(sample, tmp_path):
    other = tmp_path / "other.onnx"
    onnx.save(builders.conv_bn_model(), other)
    assert_one_error_line(run("bench", sample, other, *FAST), str(other), "inputs")


def test_model_onnxruntime_cannot_run_is_one_error_line(tmp_path):
    src = tmp_path / "f64.onnx"
    onnx.save(builders.conv_bn_model(dtype=np.float64), src)  # onnxruntime has no float64 Conv on CPU
    assert_one_error_line(run("bench", src, *FAST), str(src), "latency not measured",
                          "onnxruntime cannot load the original model")


def test_runtime_crash_is_one_error_line(sample, monkeypatch):
    monkeypatch.setattr(runner, "WORKER", [sys.executable, "-c", SEGFAULT])
    assert_one_error_line(run("bench", sample, *FAST), str(sample), "the runtime crashed (SIGSEGV) while creating a "
                          "session of the folded model (default: ORT_ENABLE_ALL)")


# ---------------------------------------------------------------------------------------------
# bnfold optimize --bench
# ---------------------------------------------------------------------------------------------


def test_optimize_bench_json_has_the_bench_and_still_writes_the_validated_output(sample, tmp_path):
    dst = tmp_path / "out.onnx"

    result = run("optimize", sample, "-o", dst, "--bench", *FAST, "--json")

    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    assert doc["written"] and doc["validation"]["passed"]
    check_document(doc["bench"])
    bench = doc["bench"]
    assert (bench["original"], bench["folded"], bench["folds"]) == (str(sample), str(dst), 9)
    assert bench["model"]["before"] == {**{k: doc["before"][k] for k in ("nodes", "parameters")},
                                        "file_bytes": sample.stat().st_size}
    assert bench["model"]["after"]["file_bytes"] == dst.stat().st_size == doc["after"]["file_bytes"]
    assert "bench" in doc["seconds"]
    onnx.checker.check_model(onnx.load(dst), full_check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "resnet_stack.onnx"]


def test_optimize_bench_table(sample, tmp_path):
    result = run("optimize", sample, "-o", tmp_path / "out.onnx", "--bench", *FAST)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.index("Validation passed") < out.index("Latency per run (ms)") < out.index("Speedup")


def test_optimize_in_place_benches_the_original(sample, monkeypatch):
    """In place, the bench runs before the rename: it must see the original file, not the result."""
    original_hash = sha256(sample)
    seen = []
    real = runner.run_bench

    def spy(original, folded, **kwargs):
        seen.append((sha256(Path(original)), sha256(Path(folded))))
        return real(original, folded, **kwargs)

    monkeypatch.setattr(runner, "run_bench", spy)
    result = CliRunner().invoke(cli, ["optimize", str(sample), "--in-place", "--bench", *FAST, "--json"])

    assert result.exit_code == 0, result.output
    assert len(seen) == 1
    assert seen[0][0] == original_hash
    assert seen[0][1] == sha256(sample) != original_hash  # the staged output is what is now in place
    assert json.loads(result.stdout)["bench"]["folds"] == 9
    sample.write_bytes((MODELS_DIR / "resnet_stack.onnx").read_bytes())  # restore for the fixture's check


def test_optimize_bench_skipped_when_validation_fails(sample, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run_bench", lambda *a, **k: pytest.fail("benched a model that failed validation"))

    result = run("optimize", sample, "-o", tmp_path / "out.onnx", "--bench", *FAST, "--atol", "0", "--rtol", "0",
                 "--json")

    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert (doc["written"], doc["bench"]) == (False, None)
    assert not (tmp_path / "out.onnx").exists()


def test_optimize_bench_crash_is_a_warning_and_the_output_is_written(sample, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "WORKER", [sys.executable, "-c", SEGFAULT])
    dst = tmp_path / "out.onnx"

    result = run("optimize", sample, "-o", dst, "--bench", *FAST, "--json")

    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["written"] and dst.exists()
    assert "the runtime crashed (SIGSEGV)" in doc["bench"]["error"]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnfold: warning: ") and "SIGSEGV" in lines[0]


def test_optimize_bench_bad_provider_fails_before_writing(sample, tmp_path):
    assert_one_error_line(run("optimize", sample, "-o", tmp_path / "out.onnx", "--bench", "--provider", "nope"),
                          "unknown execution provider 'nope'")
    assert not (tmp_path / "out.onnx").exists()


def test_optimize_bench_needs_a_single_model(sample, tmp_path):
    other = Path(shutil.copy(sample, tmp_path / "other.onnx"))
    assert_one_error_line(run("optimize", sample, other, "-o", tmp_path / "out", "--bench"), "--bench", "single")


def test_optimize_without_bench_reports_none(sample, tmp_path):
    result = run("optimize", sample, "-o", tmp_path / "out.onnx", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["bench"] is None
