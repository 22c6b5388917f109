"""Giving freed heap memory back to the OS between model calls.

    from pipeline.common.memory import release_free_memory
    features = model(batch)
    release_free_memory()          # glibc: malloc_trim(0); elsewhere: nothing

A model call allocates and frees activations of MiBs each. glibc serves them from its heap
once its dynamic mmap threshold has risen above their size, and the freed pages of that
heap stay counted in the process's memory: over hundreds of calls the peak creeps up with
the length of the video, not with the batch. ``malloc_trim(0)`` hands every whole free page
of every arena back (``madvise(MADV_DONTNEED)``), so memory after each call is what is live.
It is one call per model batch; benchmarks/memory.py measures its effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["release_free_memory"]


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim  # glibc only (musl and macOS have none)
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
