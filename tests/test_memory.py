""":mod:`pyg_mup.train.memory`: freed heap pages go back to the system, in a run once its
resident size has grown, and after each trial of a sweep."""

from __future__ import annotations

import pytest

from pyg_mup.train import memory
from pyg_mup.train.memory import HeapTrimmer, release_freed_memory, resident_bytes

needs_glibc = pytest.mark.skipif(
    memory._malloc_trim() is None or resident_bytes() is None,
    reason="needs glibc's malloc_trim and /proc",
)


def fragment(size: int = 100_000, count: int = 2_000) -> bytes:
    """Free ``count`` heap chunks of ``size`` bytes below one that stays alive (returned)."""
    chunks = [b"\x01" * size for _ in range(count)]
    return chunks[-1]


@needs_glibc
def test_freed_heap_pages_go_back_to_the_system():
    # Chunks below glibc's mmap threshold live in the heap; with the last one still alive the
    # heap cannot shrink from its top, so free() alone keeps the pages resident, as it keeps a
    # trial's freed tensors among the blocks a worker still holds.
    survivor = fragment()
    before = resident_bytes()
    assert release_freed_memory()
    assert before - resident_bytes() > 100_000_000
    assert len(survivor) == 100_000


@needs_glibc
def test_a_run_trims_only_once_it_has_grown(monkeypatch):
    trims = []
    monkeypatch.setattr(memory, "trim_host_heap", lambda: trims.append(True) or True)
    trimmer = HeapTrimmer(growth=100_000_000)
    assert not trimmer() and not trims  # nothing grew
    survivor = fragment()
    assert trimmer() and len(trims) == 1
    assert not trimmer() and len(trims) == 1  # the baseline moved to the trimmed size
    assert len(survivor) == 100_000


def test_without_proc_a_run_never_trims(monkeypatch):
    monkeypatch.setattr(memory, "resident_bytes", lambda: None)
    assert not HeapTrimmer(growth=0)()
