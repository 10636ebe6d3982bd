"""The input sets validation runs both models on: random ones that exercise different things, or the user's.

Random sets, one per kind, each seeded from (seed, kind):

- ``normal``: signed standard normal floats (what a normalized activation looks like);
- ``image``: non-negative uniform [0, 1) floats (an image scaled to [0, 1]: ReLU-like paths see
  only positive values, and a BN's shift dominates);
- ``wide``: normal floats ten times larger (four times for float16 and bfloat16, whose range is
  small): large activations, where rounding errors grow with the values.

Integers are small and non-negative (indices, counts: 0 to 3). Booleans are all True in the first
set and all False in the second, so an If on a bool input runs both branches, and random in the
others. Real inputs come as ``.npz`` files, one feed dict each (``np.savez(path, input=array)``),
read without pickles and with their size checked first.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from .errors import UsageError

KINDS = ("normal", "image", "wide")


def _scale(dtype: np.dtype) -> float:
    return 4.0 if dtype == np.float16 or dtype.name == "bfloat16" else 10.0


def random_set(model_inputs: list[onnx.ValueInfoProto], shapes: dict[str, list[int]], seed: int,
               kind: int) -> dict[str, np.ndarray]:
    """Input set number ``kind`` (0: normal, 1: image, 2: wide; more: normal again with other draws)."""
    rng = np.random.default_rng([seed, kind])
    name = KINDS[kind] if kind < len(KINDS) else "normal"
    feeds = {}
    for vi in model_inputs:
        shape = shapes[vi.name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if dtype == np.bool_:
            value = np.full(shape, True) if kind == 0 else np.full(shape, False) if kind == 1 else rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            value = rng.integers(0, 4, size=shape)
        elif name == "image":
            value = rng.random(shape)
        elif name == "wide":
            value = _scale(dtype) * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape)
        feeds[vi.name] = np.asarray(value).astype(dtype)  # 0-d draws come back as numpy scalars
    return feeds


def set_label(kind: int) -> str:
    return KINDS[kind] if kind < len(KINDS) else f"normal-{kind}"


def load_npz(path: str | os.PathLike, limit: int) -> dict[str, np.ndarray]:
    """One feed dict from an ``.npz`` file; UsageError for anything else (or above ``limit`` bytes)."""
    path = Path(path)
    from .scan import is_regular, kind_of

    if not is_regular(path):
        raise UsageError(f"{path}: {kind_of(path)}, not a regular .npz file of inputs")
    try:
        with zipfile.ZipFile(path) as archive:
            size = sum(info.file_size for info in archive.infolist())
        if size > limit:
            raise UsageError(f"{path}: its arrays take {size} bytes, more than bnfold allows ({limit})")
        with np.load(path, allow_pickle=False) as data:
            return {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{path}: not an .npz file of inputs ({' '.join(str(exc).split())})") from None


def save_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez(path, **arrays)`` for any names: as keywords, an input named ``file`` or
    ``allow_pickle`` would be savez's own parameter (a TypeError, or an array silently dropped).
    The same file: one uncompressed ``<name>.npy`` member per array, in order (an object array pickled,
    as savez does; ``load_npz`` refuses it)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=True)


def expand_paths(paths) -> list[Path]:
    """Files and folders of ``.npz`` files (a folder: its ``*.npz``, sorted) as a list of files."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.glob("*.npz") if f.is_file())
            if not found:
                raise UsageError(f"{p}: no .npz file of inputs in this folder")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise UsageError(f"{p}: no such file of inputs")
    return files


def check_set(label: str, feeds: dict[str, np.ndarray], model_inputs: list[onnx.ValueInfoProto]) -> dict[str, np.ndarray]:
    """``feeds``, or UsageError unless it has exactly the model's inputs, with their dtypes, ranks and
    static dims. (``.npz`` keeps bfloat16 as 2-byte void: read as bfloat16 where the model takes it.)"""
    names = [vi.name for vi in model_inputs]
    missing, extra = sorted(set(names) - set(feeds)), sorted(set(feeds) - set(names))
    if missing or extra:
        what = f"misses {', '.join(missing)}" if missing else f"has no input named {', '.join(extra)}"
        raise UsageError(f"{label}: the model's inputs are {', '.join(names)}; this set {what}")
    feeds = dict(feeds)
    for vi in model_inputs:
        value = feeds[vi.name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if np.dtype(dtype).name == "bfloat16" and value.dtype.kind == "V" and value.dtype.itemsize == 2:
            value = feeds[vi.name] = value.view(dtype)
        if value.dtype != dtype:
            raise UsageError(f"{label}: input '{vi.name}' is {value.dtype.name}, the model takes {np.dtype(dtype).name}")
        dims = vi.type.tensor_type.shape.dim if vi.type.tensor_type.HasField("shape") else None
        if dims is None:
            continue
        if len(dims) != value.ndim:
            raise UsageError(f"{label}: input '{vi.name}' has rank {value.ndim}, the model takes rank {len(dims)}")
        for axis, (dim, size) in enumerate(zip(dims, value.shape)):
            if dim.HasField("dim_value") and dim.dim_value >= 0 and dim.dim_value != size:
                raise UsageError(f"{label}: input '{vi.name}' has size {size} on axis {axis}, the model takes "
                                  f"{dim.dim_value}")
    return feeds
