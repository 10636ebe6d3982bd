"""Latency of an original model against its folded version, measured with onnxruntime.

``stats`` (pure numpy: percentiles, the paired bootstrap interval of the speedup), ``runner``
(parent side: prepares the files, runs ``_worker`` in a child process, returns a ``BenchResult``),
``_worker`` (the child: sessions and timed runs), ``report`` (rich tables, progress bar) and
``plot`` (matplotlib figure, optional). The entry point is ``runner.bench`` (``bnfold.bench``).
"""

# Defaults of the measuring protocol, here so the command line can show them without importing
# onnx or numpy. Counts and the time budget apply per setting.
RUNS = 1000  #: most timed original/folded pairs (enough for a p99 to mean something)
TIME_BUDGET = 10.0  #: seconds of timed pairs, whichever of RUNS comes first
MIN_PAIRS = 5  #: fewest timed pairs whatever the budget says (fewer make the interval meaningless)
WARMUP = 5  #: untimed runs of each model first
SESSION_REPEATS = 5  #: sessions created per model, interleaved, to time session creation
