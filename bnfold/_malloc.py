"""Give freed weight buffers back to the operating system (glibc only; a no-op elsewhere).

glibc raises its mmap threshold each time a large block is freed, after which blocks of up to
32 MiB come from the heap and stay in the process when freed. Folding allocates and frees one
weight-sized buffer after another, so the process kept about half the model's weights in freed
memory (resnet50: 206 MB peak instead of 176 MB). A fixed threshold keeps big buffers in their
own mappings, which ``free`` returns. The command line sets it; a library does not touch its
host process's allocator.
"""

from __future__ import annotations

import ctypes
import sys

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """Allocate blocks of ``threshold`` bytes or more with mmap; True when glibc took the setting."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, threshold))  # the process's own libc
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
