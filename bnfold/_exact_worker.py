"""Child process of the validation worker: the exact answer, the original widened to float64.

Run as ``python -m bnfold._exact_worker REQUEST.json`` (``bnfold.child``), the request being
``{"model": MODEL.onnx, "out": OUT.npz, "sets": [SET.npz, ...]}``: widens MODEL
(``bnfold.widen``), runs it on every input set (onnxruntime where it has the float64 kernels,
onnx.reference otherwise) and writes the outputs, ``set{k}/{output}``, into OUT.npz. A process of
its own, its address space limited by its parent (``_validate_worker.EXACT_MEMORY_FRACTION`` of the
memory bnfold may use): onnx.reference can take tens of GB on a segmentation network (im2col of dilated
convolutions), and running out must cost the exact reference, not the whole validation. The
result is ``{}`` with OUT written, else ``{"error": why}``.
"""

from __future__ import annotations

import sys

import numpy as np

from . import child


def main(request: dict, progress: child.Progress) -> dict:
    from .feeds import save_npz
    from .io import load_runnable
    from .runtime import Backend, prepare_for_runtime
    from .text import one_line
    from .widen import widen, widen_feeds

    try:
        wide = widen(prepare_for_runtime(load_runnable(request["model"])))
        backend = Backend(wide, progress.stage, "float64 original")
        results = {}
        names = [o.name for o in wide.graph.output]
        for k, path in enumerate(request["sets"]):
            with np.load(path, allow_pickle=False) as data:
                feeds = widen_feeds({name: data[name] for name in data.files})
            for name, value in zip(names, backend.run(backend.first, feeds, f"float64 original (set {k})")):
                results[f"set{k}/{name}"] = value
        save_npz(request["out"], results)
    except MemoryError:
        return {"error": "the float64 original needs more memory than the exact reference may use"}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {one_line(exc)}"}
    return {}


if __name__ == "__main__":
    sys.exit(child.serve(main))
