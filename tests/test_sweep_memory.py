""":mod:`pyg_mup.sweep.memory`: a finished trial's freed heap pages go back to the system."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyg_mup.sweep.memory import _malloc_trim, release_freed_memory

STATM = Path("/proc/self/statm")


def resident_bytes() -> int:
    return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(
    _malloc_trim() is None or not STATM.exists(), reason="needs glibc's malloc_trim and /proc"
)
def test_freed_heap_pages_go_back_to_the_system():
    # Chunks below glibc's mmap threshold live in the heap; with the last one still alive the
    # heap cannot shrink from its top, so free() alone keeps the pages resident, as it keeps a
    # trial's freed tensors among the blocks a worker still holds.
    size = 100_000
    chunks = [b"\x01" * size for _ in range(2_000)]
    survivor = chunks[-1]
    del chunks
    before = resident_bytes()
    assert release_freed_memory()
    assert before - resident_bytes() > 1_000 * size
    assert len(survivor) == size
