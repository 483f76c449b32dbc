"""Structures built where batches are made: in the ``DataLoader``, on the CPU, off the step.

A structure is a pure function of its batch, so it is built in the loader's collate step — in
worker processes when ``num_workers > 0`` — from sizes the host knows (``batch.ptr``), pinned
with the batch, and moved with ``.to(device, non_blocking=True)``. The training step then reads
it and never waits for the device to answer a question about the graph.

Use :class:`StructureLoader` (a ``torch.utils.data.DataLoader``, the way PyG's own ``DataLoader``
is one; PyG's replaces any ``collate_fn``) or pass a :class:`StructureCollater` as the
``collate_fn`` of a plain ``DataLoader``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torch_geometric.data import Batch, Data

from .structure import MODES, GraphStructure


@dataclass(frozen=True)
class StructureSpec:
    """Which structures a model reads per batch.

    Args:
        modes: attention modes, e.g. ``('local', 'global')``.
        max_distance: hop distances of global structures (``None``: none).
        target: device type the model runs on: ``'cuda'`` builds FlexAttention block masks
            (128-slot blocks), ``'cpu'`` packs graphs into small blocks for the dense backend.
    """

    modes: tuple[str, ...] = ("local",)
    max_distance: int | None = None
    target: str = "cpu"

    def __post_init__(self) -> None:
        unknown = [mode for mode in self.modes if mode not in MODES]
        if unknown or not self.modes:
            raise ValueError(f"modes must be a non-empty tuple of {MODES}, got {self.modes!r}")
        if self.target not in ("cpu", "cuda"):
            raise ValueError(f"target must be 'cpu' or 'cuda', got {self.target!r}")

    def build(
        self,
        edge_index: Tensor,
        num_nodes: int,
        batch: Tensor | None = None,
        ptr: Tensor | None = None,
        hop_distance: Tensor | None = None,
    ) -> dict[str, GraphStructure]:
        """The structures of one batch, built where ``edge_index`` lives (the CPU in a loader)."""
        structures: dict[str, GraphStructure] = {}
        for mode in self.modes:
            options = {}
            if mode == "global":
                options = {
                    "batch": batch,
                    "ptr": ptr,
                    "max_distance": self.max_distance,
                    "hop_distance": hop_distance if self.max_distance is not None else None,
                }
            structures[mode] = GraphStructure.build(
                edge_index, num_nodes, mode=mode, target=self.target, **options
            )
        return structures

    def build_batch(self, batch: Batch | Data) -> dict[str, GraphStructure]:
        """:meth:`build` from a PyG batch (its ``ptr`` and any stored ``hop_distance``)."""
        return self.build(
            batch.edge_index,
            batch.num_nodes,
            getattr(batch, "batch", None),
            getattr(batch, "ptr", None),
            getattr(batch, "hop_distance", None),
        )


@dataclass
class StructuredBatch:
    """A PyG ``Batch`` and its structures, moved and pinned together."""

    batch: Batch
    structures: dict[str, GraphStructure]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StructuredBatch:
        return StructuredBatch(
            self.batch.to(device, non_blocking=non_blocking),
            {k: s.to(device, non_blocking=non_blocking) for k, s in self.structures.items()},
        )

    def pin_memory(self) -> StructuredBatch:
        """Called by ``DataLoader(pin_memory=True)`` in the main process."""
        return StructuredBatch(
            self.batch.pin_memory(), {k: s.pin_memory() for k, s in self.structures.items()}
        )


class StructureCollater:
    """``collate_fn``: a list of graphs → :class:`StructuredBatch` (PyG's ``Batch`` plus the
    structures of ``spec``). Picklable, so it runs in ``DataLoader`` worker processes."""

    def __init__(
        self,
        spec: StructureSpec,
        follow_batch: Sequence[str] | None = None,
        exclude_keys: Sequence[str] | None = None,
    ) -> None:
        self.spec = spec
        self.follow_batch = follow_batch
        self.exclude_keys = exclude_keys

    def __call__(self, data_list: list[Data]) -> StructuredBatch:
        batch = Batch.from_data_list(data_list, self.follow_batch, self.exclude_keys)
        return StructuredBatch(batch, self.spec.build_batch(batch))


class StructureLoader(DataLoader):
    """PyG-style ``DataLoader`` whose batches carry their structures (:class:`StructuredBatch`).

    ``pin_memory`` defaults to ``True`` when the spec targets CUDA and CUDA is available, so the
    step's ``.to(device, non_blocking=True)`` does not wait.
    """

    def __init__(self, dataset, spec: StructureSpec, batch_size: int = 1, **kwargs) -> None:
        kwargs.pop("collate_fn", None)
        kwargs.setdefault("pin_memory", spec.target == "cuda" and torch.cuda.is_available())
        follow_batch = kwargs.pop("follow_batch", None)
        exclude_keys = kwargs.pop("exclude_keys", None)
        super().__init__(
            dataset,
            batch_size=batch_size,
            collate_fn=StructureCollater(spec, follow_batch, exclude_keys),
            **kwargs,
        )


def transfer(item: StructuredBatch, device: torch.device | str) -> StructuredBatch:
    """Move a collated batch and its structures to ``device`` without waiting (when pinned)."""
    return item.to(device, non_blocking=True)
