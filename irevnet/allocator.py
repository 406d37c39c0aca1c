"""glibc malloc settings for measurements (Linux): a steady state for latency, exact resident
memory for memory figures. Each returns False/None where the C library is not glibc."""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def steady_allocator() -> str | None:
    """Fixes glibc malloc's mmap threshold (32 MiB) and trim threshold (2 GiB) for this process.

    By default glibc raises the mmap threshold as large blocks are freed and trims the heap, so
    PyTorch eager's per-call activations alternate between mmap/munmap and heap reuse: its batch-1
    latency on irevnet-301 swung between ~230 and ~350 ms from run to run. Fixed thresholds keep it
    in the fast steady state (what `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` do at
    process start). Returns what was set, or None where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    if mallopt(_M_MMAP_THRESHOLD, 32 << 20) != 1 or mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1) != 1:
        return None
    return "glibc mallopt: M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 2 GiB"


def exact_rss() -> bool:
    """Makes resident memory follow live tensors (glibc): blocks over 64 KiB are mmapped and go
    back to the system when freed, and free heap memory is returned now. Without this, memory a
    previous step freed stays resident in malloc's heap, and a step that reuses it shows no growth."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.mallopt(_M_MMAP_THRESHOLD, 64 << 10) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 0) == 1 \
            and libc.malloc_trim(0) >= 0
    except (OSError, AttributeError):
        return False
