"""Child process of the validation worker: the exact answer, the original widened to float64.

Run as ``python -m bnfold._exact_worker MODEL.onnx OUT.npz SET.npz...``: widens MODEL
(``bnfold.widen``), runs it on every input set (onnxruntime where it has the float64 kernels,
onnx.reference otherwise) and writes the outputs, ``set{k}/{output}``, into OUT.npz. A process of
its own, with its address space limited (``MEMORY_FRACTION`` of physical memory): onnx.reference
can take tens of GB on a segmentation network (im2col of dilated convolutions), and running out
must cost the exact reference, not the whole validation. Exit status 0 with OUT written, else
the last line of stderr says why.
"""

from __future__ import annotations

import resource
import sys

import numpy as np

#: The exact reference may use at most this fraction of physical memory (address space).
MEMORY_FRACTION = 0.5


def _limit_memory() -> None:
    import os

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        limit = int(total * MEMORY_FRACTION)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError, AttributeError):  # no limit where it cannot be set: still bounded by time
        pass


def main(argv: list[str]) -> int:
    model_path, out_path, *set_paths = argv
    _limit_memory()
    from .io import load_runnable
    from .runtime import Backend, prepare_for_runtime
    from .widen import widen, widen_feeds

    try:
        wide = widen(prepare_for_runtime(load_runnable(model_path)))
        backend = Backend(wide, None, "float64 original")
        results = {}
        names = [o.name for o in wide.graph.output]
        for k, path in enumerate(set_paths):
            with np.load(path, allow_pickle=False) as data:
                feeds = widen_feeds({name: data[name] for name in data.files})
            for name, value in zip(names, backend.run(backend.first, feeds, f"float64 original (set {k})")):
                results[f"set{k}/{name}"] = value
        np.savez(out_path, **results)
    except MemoryError:
        print("the float64 original needs more memory than the exact reference may use", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
