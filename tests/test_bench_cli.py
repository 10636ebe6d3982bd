"""``bnfold bench`` and ``bnfold optimize --bench``: what is measured, what is reported, how it fails.

Real measurements run on the small sample model with ``--runs 5 --warmup 1`` (three rounds of
2, 2 and 1 pairs: counts, never a time, decide when they stop; the numbers are noise at that size,
and the tests check the protocol and the report, never a speedup). Rendering of verdicts is tested
on synthetic timings, where the right answer is known. Every test that runs a command hashes the
input model before and after: bench never modifies it. What a folded model must share with the
original before anything is timed, and the --plot checks, are tested for their exit codes, their
exact error lines and that nothing was measured.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result

import bnfold
import builders
from bnfold.cli import cli
from bnfold.latency import ROUNDS, runner, stats

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
FAST = ("--runs", "5", "--warmup", "1")
#: The round of each pair FAST times per setting (a round's quota is 2 pairs; the last one stops at 5).
FAST_ROUNDS = [0, 0, 1, 1, 2]
BENCH_KEYS = {"original", "folded", "folds", "model", "runtime", "protocol", "checks", "settings", "seconds"}
SETTING_KEYS = {"name", "optimization_level", "meaning", "providers", "session_config", "pairs", "rounds", "stopped_by",
                "seconds", "latency_ms", "speedup", "session_ms", "session_speedup", "raw"}
SPEEDUP_KEYS = {"ratio", "ci_low", "ci_high", "confidence", "family_confidence", "method", "unit", "n", "min_n",
                "detectable_ratio", "verdict"}
OPT_OUT = "pass --no-check-outputs to time models that compute different things"
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


def check_setting(setting: dict, name: str, level: str, rounds: list[int]) -> None:
    """One setting of the JSON: raw numbers > 0, the protocol's order, and every figure recomputes
    from the raw numbers."""
    pairs = len(rounds)
    assert set(setting) == SETTING_KEYS
    assert (setting["name"], setting["optimization_level"], setting["pairs"]) == (name, level, pairs)
    assert setting["rounds"] == len(set(rounds))
    assert setting["providers"][0] == "CPUExecutionProvider"
    assert setting["session_config"] == {"session.force_spinning_stop": "1"}  # as the child's sessions report it
    raw = setting["raw"]
    assert raw["round"] == rounds
    for key in ("original_ms", "folded_ms"):
        assert len(raw[key]) == pairs and all(v > 0 for v in raw[key]), raw[key]
    # ABBA in each round, the round's first pair led by the original in even rounds, the folded model in odd ones
    within = [i - rounds.index(r) for i, r in enumerate(rounds)]
    assert raw["first"] == ["original" if (r + i) % 2 == 0 else "folded" for r, i in zip(rounds, within)]
    for which in ("original", "folded"):
        summary = setting["latency_ms"][which]
        values = raw[f"{which}_ms"]
        assert summary["n"] == pairs
        assert summary["median"] == pytest.approx(np.median(values))
        assert summary["p90"] == pytest.approx(np.percentile(values, 90))
        assert summary["p99"] == pytest.approx(np.percentile(values, 99))
        sessions = raw[f"session_{which}_ms"]
        assert len(sessions) == 2 * setting["rounds"] and all(v > 0 for v in sessions)  # two per round
        assert setting["session_ms"][which]["median"] == pytest.approx(np.median(sessions))
    # anyone can recompute every speedup from the raw numbers (nothing random in them)
    assert setting["speedup"] == stats.round_speedup(raw["original_ms"], raw["folded_ms"], rounds).to_dict()
    assert setting["session_speedup"] == stats.speedup(raw["session_original_ms"], raw["session_folded_ms"]).to_dict()
    for key, unit in (("speedup", stats.ROUNDS), ("session_speedup", stats.BLOCKS)):
        sp = setting[key]
        assert set(sp) == SPEEDUP_KEYS
        assert (sp["unit"], sp["confidence"], sp["family_confidence"]) == (unit, stats.CONFIDENCE, 0.95)
        if sp["ci_low"] is not None:
            assert 0 < sp["ci_low"] <= sp["ratio"] <= sp["ci_high"]
        assert sp["verdict"] == stats.verdict(sp["ci_low"] or 0.0, sp["ci_high"] or float("inf"))


def check_document(doc: dict, rounds: list[int] = FAST_ROUNDS) -> None:
    assert set(doc) == BENCH_KEYS
    assert [s["name"] for s in doc["settings"]] == ["disabled", "default"]
    check_setting(doc["settings"][0], "disabled", "ORT_DISABLE_ALL", rounds)
    check_setting(doc["settings"][1], "default", "ORT_ENABLE_ALL", rounds)
    assert doc["runtime"]["provider"] == "CPUExecutionProvider"
    assert doc["protocol"]["inputs"] == {"input": [1, 3, 32, 32]}
    assert doc["protocol"]["family"] == {"confidence": 0.95, "intervals": 4, "correction": "Bonferroni",
                                         "interval_confidence": stats.CONFIDENCE, "min_units": 8}
    outputs = doc["checks"]["outputs"]
    assert outputs["checked"] and outputs["backend"] == "onnxruntime (CPU, ORT_DISABLE_ALL)"
    [logits] = outputs["outputs"]
    assert (logits["name"], logits["dtype"], logits["passed"]) == ("logits", "float32", True)


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
    assert doc["checks"]["interface"] == "folded by bnfold from the original"  # the outputs are still compared
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
    assert doc["checks"]["interface"] == "same inputs and outputs as the original"
    assert doc["model"]["after"]["file_bytes"] == folded.stat().st_size
    assert doc["model"]["after"]["nodes"] == len(onnx.load(folded).graph.node) == 22


def test_bench_table(sample):
    result = run("bench", sample, *FAST)

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"bnfold bench {sample} vs folded in memory (9 folds)" in out
    for fragment in ("Latency per run (ms)", "median", "p90", "p99",
                     "Speedup = median ratio original/folded; 98.75% intervals, 95% for all 4 together (Bonferroni)",
                     "disabled (ORT_DISABLE_ALL)", "default (ORT_ENABLE_ALL)", "fuses Conv+BN itself",
                     "Checked before timing: folded by bnfold from the original; every output agrees on one seeded "
                     "input within tolerance (onnxruntime (CPU, ORT_DISABLE_ALL); largest difference "):
        assert fragment in out, fragment
    rows = [[c.strip() for c in line.strip().strip("│").split("│")] for line in out.splitlines() if "│" in line]
    nodes = [r for r in rows if r[0] == "nodes"]
    assert nodes == [["nodes", "31", "22", "-29.0%"]]
    sessions = [r[-1] for r in rows if r[1] in ("original", "folded")]
    assert sessions == ["6"] * 4  # the n column: two sessions of each model per round, three rounds
    speedups = [r for r in rows if r[1] in ("run", "session")]
    assert [r[1:3] for r in speedups] == [["run", "2 rounds"], ["session", "3 blocks"]] * 2  # round 3: 1 pair
    for row in speedups:  # 2 rounds, 3 blocks: too few for any interval at 98.75 %, and said so
        assert row[3].endswith("×") and row[4] == "unbounded"
        unit = "rounds" if row[1] == "run" else "ABBA blocks"
        assert row[5] == f"no measurable difference (too few samples: {row[2].split()[0]} {unit}, an interval needs 8)"


def test_python_api_progress_events_and_time_budget(tmp_path):
    model = builders.conv_bn_model()
    kept = model.SerializeToString()
    events: list[dict] = []
    options = bnfold.BenchOptions(runs=100_000, time_budget=0.2, warmup=1, rounds=3, on_progress=events.append)

    result = bnfold.bench(model, options=options)

    assert model.SerializeToString() == kept, "bench changed the caller's model"
    assert (result.original, result.folded, result.folds) == ("<in-memory model>", None, 1)
    assert [s.name for s in result.settings] == ["disabled", "default"]
    for s in result.settings:
        assert s.stopped_by == "time budget"
        assert runner.MIN_PAIRS <= len(s.first) < 100_000
        assert s.seconds >= 0.2
        assert sorted(set(s.rounds)) == [0, 1, 2] and len(s.session_original_ms) == 6
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


CHECKED = {"interface": "same inputs and outputs as the original",
           "outputs": {"checked": True, "backend": "onnxruntime (CPU, ORT_DISABLE_ALL)",
                       "outputs": [{"name": "Y", "dtype": "float32", "shape": [1, 8], "max_abs": 2e-6, "max_rel": 1e-6,
                                    "atol": 1e-4, "rtol": 1e-3, "passed": True}]}}


def synthetic_result(original_ms: list[float], folded_ms: list[float], sessions: int = 20,
                     checks: dict = CHECKED) -> runner.BenchResult:
    """Ten rounds of the given pairs; ``sessions`` identical session timings per model."""
    rounds = list(np.repeat(np.arange(10), len(original_ms) // 10))
    creation = list(np.linspace(4.0, 6.0, sessions))
    raw = {"latency_ms": {"original": original_ms, "folded": folded_ms}, "round": rounds,
           "session_ms": {"original": creation, "folded": creation},
           "first": ["original", "folded"] * (len(original_ms) // 2), "stopped_by": "time budget", "seconds": 10.0,
           "providers": ["CPUExecutionProvider"], "session_config": {}}
    settings = [runner.SettingResult.from_raw({**raw, "name": name, "optimization_level": level})
                for name, level in (("disabled", "ORT_DISABLE_ALL"), ("default", "ORT_ENABLE_ALL"))]
    figures = runner.ModelFigures(10, 100, 1000)
    return runner.BenchResult("a.onnx", "b.onnx", None, figures, figures, "CPUExecutionProvider", None,
                              {"input": [1, 3]}, 0, 1, 100, 10.0, 10, "1.32.0", settings, checks=checks)


def rendered(result: runner.BenchResult) -> str:
    from io import StringIO

    from bnfold.latency.report import render_bench
    from bnfold.textout import Out

    out = StringIO()
    render_bench(result, Out(out, color=False))
    return out.getvalue()


def test_render_names_a_measured_speedup_with_its_interval():
    rng = np.random.default_rng(0)
    folded = list(rng.lognormal(0, 0.02, 40))
    text = rendered(synthetic_result([2 * v for v in folded], folded))
    assert text.count("2.000×") == 2 and text.count("[2.000, 2.000]") == 2
    assert text.count("folded faster") == 2
    assert text.count("1.000×") == 2  # identical session timings: exactly 1, and the resolution says how exact
    assert text.count(f"{stats.NO_DIFFERENCE} (none beyond ±0.0 %)") == 2
    assert "stopped by the time budget after 40 pairs in 10 rounds" in text
    assert "bnfold bench a.onnx vs b.onnx" in text
    assert ("Checked before timing: same inputs and outputs as the original; every output agrees on one seeded input "
            "within tolerance (onnxruntime (CPU, ORT_DISABLE_ALL); largest difference 2e-06)") in text


def test_render_states_the_resolution_of_no_measurable_difference():
    """Rounds 1 % apart at random: no verdict, and the verdict says how small a difference it could have seen."""
    rng = np.random.default_rng(3)
    folded = list(rng.lognormal(0, 0.001, 400))
    offsets = np.repeat(np.exp(rng.normal(0, 0.01, 10)), 40)
    result = synthetic_result(list(offsets * folded), folded)
    sp = result.settings[0].speedup
    assert sp.verdict == stats.NO_DIFFERENCE and sp.bounded
    assert f"{stats.NO_DIFFERENCE} (none beyond ±{(sp.detectable - 1) * 100:.1f} %)" in rendered(result)
    assert result.to_dict()["settings"][0]["speedup"]["detectable_ratio"] == sp.detectable


def test_render_says_when_the_outputs_were_not_compared():
    folded = list(np.random.default_rng(0).lognormal(0, 0.02, 40))
    text = rendered(synthetic_result(folded, folded, checks={
        "interface": "same inputs as the original (outputs not compared)",
        "outputs": {"checked": False, "reason": "--no-check-outputs"}}))
    assert ("Outputs not compared (--no-check-outputs): the two models may compute different things; the speedups "
            "compare their latencies only") in text
    assert "Checked before timing" not in text


def test_render_bounds_near_one_show_the_digits_the_verdict_rests_on():
    folded = list(np.random.default_rng(0).lognormal(0, 0.0001, 40))
    text = rendered(synthetic_result([1.0002 * v for v in folded], folded))
    assert text.count("1.0002× │ [1.0002, 1.0002] │ folded faster") == 2


def test_render_says_no_measurable_difference_when_the_interval_holds_one():
    rng = np.random.default_rng(1)
    text = rendered(synthetic_result(list(rng.lognormal(0, 0.3, 40)), list(rng.lognormal(0, 0.3, 40)), sessions=5))
    assert "faster" not in text and "slower" not in text
    assert text.count(stats.NO_DIFFERENCE) == 4
    # 5 sessions (2 blocks) carry no interval at all: said so, not bootstrapped into one
    assert text.count("unbounded") == 2
    assert text.count(f"{stats.NO_DIFFERENCE} (too few samples: 2 ABBA blocks, an interval needs 8)") == 2


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


@pytest.fixture
def no_measuring(monkeypatch):
    """Fails the test if anything is measured."""
    monkeypatch.setattr(runner, "bench", lambda *a, **k: pytest.fail("measured although the run was refused"))


def test_plot_needs_a_png_name_in_an_existing_folder(sample, tmp_path, no_measuring):
    assert_one_error_line(run("bench", sample, "--plot", tmp_path / "x.txt"), "x.txt", "PNG")
    missing = tmp_path / "missing" / "x.png"
    assert assert_one_error_line(run("bench", sample, "--plot", missing)) == (
        f"bnfold: error: {missing}: the folder {missing.parent} does not exist")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert assert_one_error_line(run("bench", sample, "--plot", a_file / "x.png")) == (
        f"bnfold: error: {a_file / 'x.png'}: {a_file} is not a folder")


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder this process cannot create files in: a read-only one, or for root (who may write
    anywhere permissions allow) /sys, which the kernel keeps file-less."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except OSError:
        yield folder
    else:  # root
        (folder / "probe").unlink()
        if not Path("/sys").is_dir() or os.access("/sys", os.W_OK) and _can_create("/sys"):
            pytest.skip("no folder here that this process cannot write in")
        yield Path("/sys")
    folder.chmod(0o755)


def _can_create(folder: str) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def test_unwritable_plot_folder_fails_before_measuring(sample, unwritable_folder, no_measuring):
    png = unwritable_folder / "latency.png"

    line = assert_one_error_line(run("bench", sample, *FAST, "--plot", png))

    assert line.startswith(f"bnfold: error: {png}: cannot write in the folder {unwritable_folder} (")
    assert not png.exists()


def test_plot_failing_after_measuring_keeps_the_results(sample, tmp_path, monkeypatch):
    """The folder disappears while measuring: the JSON is printed whole, a warning says what was lost, exit 0."""
    folder = tmp_path / "plots"
    folder.mkdir()
    png = folder / "latency.png"
    real = runner.bench

    def measure_then_lose_the_folder(*args, **kwargs):
        result = real(*args, **kwargs)
        shutil.rmtree(folder)
        return result

    monkeypatch.setattr(runner, "bench", measure_then_lose_the_folder)
    result = run("bench", sample, *FAST, "--plot", png, "--json")

    assert result.exit_code == 0, result.output
    check_document(json.loads(result.stdout))
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"bnfold: warning: {png}: the plot could not be written (FileNotFoundError: ")
    assert lines[0].endswith("; the results above are complete")


def test_plot_failing_after_measuring_keeps_the_table(sample, tmp_path, monkeypatch):
    from bnfold.latency import plot

    def broken(result, path):
        raise RuntimeError("the renderer ran out of memory")

    monkeypatch.setattr(plot, "plot_bench", broken)
    png = tmp_path / "latency.png"
    result = run("bench", sample, *FAST, "--plot", png)

    assert result.exit_code == 0, result.output
    assert "Speedup = median ratio" in result.stdout and "Plot:" not in result.stdout
    assert result.stderr == (f"bnfold: warning: {png}: the plot could not be written (RuntimeError: the renderer ran "
                             "out of memory); the results above are complete\n")


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


def test_rounds_option(sample):
    result = run("bench", sample, "--runs", "12", "--warmup", "0", "--rounds", "3", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["protocol"]["max_rounds"] == 3
    check_document(doc, rounds=[0] * 4 + [1] * 4 + [2] * 4)
    assert_one_error_line(run("bench", sample, "--rounds", "2"), "--rounds")
    assert f"default {ROUNDS}" in run("bench", "--help").stdout


# ---------------------------------------------------------------------------------------------
# bnfold bench: FOLDED must be comparable with MODEL, checked before anything is timed
# ---------------------------------------------------------------------------------------------


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def test_folded_model_with_other_inputs_is_refused_naming_it(sample, tmp_path):
    other = save(builders.conv_bn_model(), tmp_path / "other.onnx")
    outputs = "; it has no output 'logits'; it has output 'Y' that the original lacks"
    for extra, also in (((), outputs), (("--no-check-outputs",), "")):  # inputs are checked whatever: same tensors
        line = assert_one_error_line(run("bench", sample, other, *FAST, *extra))
        assert line == (f"bnfold: error: {other}: not comparable with {sample}: it has no input 'input'; it has input "
                        f"'X' that the original lacks{also} (bench times a model against its folded version, on the "
                        "same inputs)")
    events: list[dict] = []
    with pytest.raises(bnfold.BnfoldError, match="other.onnx: not comparable"):
        bnfold.bench(sample, other, options=bnfold.BenchOptions(on_progress=events.append))
    assert events == []  # refused in bnfold itself: no measuring process was even started


def test_folded_model_with_other_outputs_is_refused_unless_told(tmp_path):
    src = save(builders.conv_bn_model(), tmp_path / "model.onnx")
    renamed = builders.conv_bn_model()
    renamed.graph.output[0].name = "Z"
    renamed.graph.node[-1].output[0] = "Z"
    other = save(renamed, tmp_path / "other.onnx")

    line = assert_one_error_line(run("bench", src, other, *FAST))
    assert line == (f"bnfold: error: {other}: not comparable with {src}: it has no output 'Y'; it has output 'Z' that "
                    f"the original lacks (bench times a model against its folded version, on the same inputs; "
                    f"{OPT_OUT})")

    result = run("bench", src, other, *FAST, "--no-check-outputs", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checks"] == {"interface": "same inputs as the original (outputs not compared)",
                                                   "outputs": {"checked": False, "reason": "--no-check-outputs"}}


def test_unrelated_model_with_the_same_interface_is_refused_after_one_run(tmp_path):
    """Same inputs and outputs, other weights: the issue's 'folded faster, 35x'. One seeded run
    shows the outputs disagree; the error names FOLDED and nothing is timed."""
    src = save(builders.conv_bn_model(seed=0), tmp_path / "model.onnx")
    other = save(builders.conv_bn_model(seed=1), tmp_path / "unrelated.onnx")

    line = assert_one_error_line(run("bench", src, other, *FAST))

    assert line.startswith(f"bnfold: error: {other}: not comparable with {src}: on the same seeded input output 'Y' "
                           "differs by up to ")
    assert line.endswith(f" (tolerance 0.0001 + 0.001·|original|) (bench times a model against its folded version; "
                         f"{OPT_OUT})")

    events: list[dict] = []
    with pytest.raises(bnfold.BnfoldError, match="unrelated.onnx: not comparable"):
        bnfold.bench(src, other, options=bnfold.BenchOptions(runs=5, warmup=1, on_progress=events.append))
    stages = [e.get("text", "") for e in events]
    assert any("checking the outputs of the folded model" in t for t in stages)
    assert not [e for e in events if e["event"] == "pair" or "creating a session" in e.get("text", "")], events


def test_no_check_outputs_times_different_models_and_says_so(tmp_path):
    src = save(builders.conv_bn_model(seed=0), tmp_path / "model.onnx")
    other = save(builders.conv_bn_model(seed=1), tmp_path / "unrelated.onnx")

    result = run("bench", src, other, *FAST, "--no-check-outputs")

    assert result.exit_code == 0, result.output
    assert "Outputs not compared (--no-check-outputs): the two models may compute different things" in result.stdout


def test_folded_in_memory_is_output_checked_too(tmp_path, monkeypatch):
    """Were bnfold's own fold wrong, the bench would refuse it too, naming MODEL folded in memory
    (a stand-in child reports what the real one reports on outputs that disagree)."""
    src = save(builders.conv_bn_model(), tmp_path / "model.onnx")
    monkeypatch.setattr(runner, "WORKER", [sys.executable, "-c", WRONG_OUTPUTS])

    line = assert_one_error_line(run("bench", src, *FAST))

    assert line.startswith(f"bnfold: error: {src} folded in memory: not comparable with {src}: on the same seeded "
                           "input output 'Y' differs by up to 1 ")


#: A stand-in measuring child whose output check found a difference (the real one's result format).
WRONG_OUTPUTS = """import json, sys
req = json.load(open(sys.argv[1]))
check = {"checked": True, "backend": "onnxruntime (CPU, ORT_DISABLE_ALL)", "outputs": [],
         "differences": ["output 'Y' differs by up to 1 (tolerance 0.0001 + 0.001·|original|)"]}
json.dump({"settings": [], "inputs": {"X": [1, 4, 8, 8]}, "outputs_check": check}, open(req["result"], "w"))
"""


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
