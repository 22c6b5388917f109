"""release_free_memory: freed heap pages go back to the OS (glibc), a no-op elsewhere."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from pipeline.common.memory import release_free_memory


def _private_kib() -> int:
    """This process's private (dirty) memory from /proc/self/smaps_rollup."""
    fields = {}
    for line in open("/proc/self/smaps_rollup"):
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            fields[parts[0].rstrip(":")] = int(parts[1])
    return fields["Private_Dirty"]


@pytest.mark.skipif(platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc",
                    reason="malloc_trim is glibc's")  # fmt: skip
def test_freed_small_blocks_are_returned_to_the_os():
    # Many 64 KiB blocks come from the heap (below the mmap threshold), not from mmap: freeing
    # them leaves their pages dirty until the heap is trimmed. One block kept at the end
    # keeps the heap's top in place, so only malloc_trim can give the pages back.
    blocks = [np.ones(64 * 1024 // 8) for _ in range(2000)]  # ~125 MiB
    keep = np.ones(64 * 1024 // 8)
    del blocks
    before = _private_kib()
    assert release_free_memory() is True
    after = _private_kib()
    assert before - after > 64 * 1024, (before, after)  # at least 64 MiB handed back
    assert keep.sum() > 0
