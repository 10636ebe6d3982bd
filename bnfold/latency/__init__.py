"""Latency of an original model against its folded version, measured with onnxruntime.

``stats`` (pure numpy: percentiles, the speedup with its exact interval, the family-wise level),
``interface`` (is the folded model comparable: same inputs and outputs), ``runner`` (parent side:
prepares and checks the files, runs ``_worker`` in a child process, returns a ``BenchResult``),
``_worker`` (the child: sessions and timed runs), ``report`` (rich tables, progress bar) and
``plot`` (matplotlib figure, optional). The entry point is ``runner.bench`` (``bnfold.bench``).
"""

# Defaults of the measuring protocol, here so the command line can show them without importing
# onnx or numpy. Counts and the time budget apply per setting.
RUNS = 1000  #: most timed original/folded pairs (enough for a p99 to mean something)
TIME_BUDGET = 10.0  #: seconds of timed pairs, whichever of RUNS comes first
MIN_PAIRS = 5  #: fewest timed pairs whatever the budget says
WARMUP = 5  #: untimed runs of each model first
MIN_ROUNDS = 3  #: fewest rounds one may ask for (each times at least one ABBA block)
ROUNDS = 30  #: rounds per setting, each with a fresh session of each model (fewer if the budget runs out)
