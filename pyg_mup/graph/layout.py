"""Where each node sits in the attention sequence: node orders that make blocks denser.

FlexAttention's cost is the number of (128-query × 128-key) blocks it visits, and the dense
backend's is the number of B × B blocks. Two layouts cut it, both invisible to callers (the
attention scatters features into the layout and gathers results back):

* ``'rcm'`` (local mode): reverse Cuthill–McKee order, which puts neighbours at nearby positions,
  so a large sparse graph in random node order touches few blocks instead of ~E of them.
* ``'pack'``: graphs that fit in one block never straddle a block boundary (padding slots fill
  the rest), so each query block attends to one key block instead of two or three. Global mode
  packs the batch's graphs; local mode packs :func:`edge_segments` (node ranges no edge crosses,
  at most as large as the graphs), which makes its attention block-diagonal for the dense
  backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import reverse_cuthill_mckee
from torch import Tensor

LAYOUTS = (None, "auto", "rcm", "pack")


@dataclass(eq=False)
class Layout:
    """``node_slot``: ``[N]`` slot of each node; ``node_of_slot``: ``[S]`` node of each slot
    (-1 = padding); ``seq_len``: ``S``. Both tensors ``None`` for the identity layout."""

    seq_len: int
    node_slot: Tensor | None = None
    node_of_slot: Tensor | None = None

    def to_slots(self, value: Tensor) -> Tensor:
        """Per-node rows ``[N, ...]`` in slot order ``[S, ...]`` (zeros at padding).

        A copy into distinct slots, whose backward is a gather: a gather from node rows with
        every padding slot reading one zero row would make the backward add thousands of
        duplicates into that row, which indexing's CUDA backward does one after another."""
        if self.node_slot is None:
            return value
        slots = value.new_zeros((self.seq_len, *value.shape[1:]))
        return slots.index_copy(0, self.node_slot, value)

    def from_slots(self, value: Tensor) -> Tensor:
        """Inverse of :meth:`to_slots`: rows ``[S, ...]`` back in node order ``[N, ...]``."""
        return value if self.node_slot is None else value.index_select(0, self.node_slot)

    def apply(self, fn: Callable[[Tensor], Tensor]) -> Layout:
        if self.node_slot is None:
            return self
        return Layout(self.seq_len, fn(self.node_slot), fn(self.node_of_slot))


def identity_layout(num_nodes: int) -> Layout:
    return Layout(num_nodes)


def slot_layout(node_slot: Tensor, seq_len: int) -> Layout:
    node_of_slot = torch.full((seq_len,), -1, dtype=torch.long, device=node_slot.device)
    node_of_slot[node_slot] = torch.arange(node_slot.numel(), device=node_slot.device)
    return Layout(seq_len, node_slot, node_of_slot)


def rcm_layout(edge_index: Tensor, num_nodes: int) -> Layout:
    """Reverse Cuthill–McKee order of the symmetrised graph (SciPy, on the CPU)."""
    src, dst = edge_index.cpu().numpy()
    ones = np.ones(src.size, dtype=np.int8)
    adjacency = coo_matrix((ones, (dst, src)), shape=(num_nodes, num_nodes)).tocsr()
    order = reverse_cuthill_mckee((adjacency + adjacency.T).tocsr(), symmetric_mode=True)
    slots = torch.empty(num_nodes, dtype=torch.long)
    slots[torch.from_numpy(order.astype(np.int64))] = torch.arange(num_nodes)
    return slot_layout(slots.to(edge_index.device), num_nodes)


def packed_graph_starts(graph_sizes: Sequence[int], block_size: int) -> tuple[list[int], int]:
    """First slot of each graph, next-fit packed into blocks, and the sequence length.

    A graph that does not fit in what is left of the current block starts the next block; one
    larger than a block starts at a block boundary too, so it spans as few blocks as possible.
    """
    starts = []
    position = 0
    for size in graph_sizes:
        used = position % block_size
        if used and used + size > block_size:
            position += block_size - used
        starts.append(position)
        position += size
    return starts, position


def pack_layout(graph_sizes: Sequence[int], block_size: int, device: torch.device) -> Layout:
    """Graphs (nodes contiguous, in order, of the given sizes) packed into blocks."""
    starts, seq_len = packed_graph_starts(graph_sizes, block_size)
    first_node = np.cumsum([0, *graph_sizes[:-1]]) if len(graph_sizes) else np.zeros(0)
    shift = np.repeat(np.asarray(starts, dtype=np.int64) - first_node, graph_sizes)
    node_slot = torch.from_numpy(np.arange(shift.size, dtype=np.int64) + shift)
    return slot_layout(node_slot.to(device), seq_len)


def edge_segments(edge_index: Tensor, num_nodes: int) -> list[int]:
    """Sizes of the shortest consecutive node ranges that no edge crosses, in node order.

    The graphs of a PyG batch are consecutive ranges without edges between them, so each graph
    is one segment or several (an isolated node, a part with no edge to the rest): packing the
    segments keeps every edge inside one block without needing ``batch``. A node ``i`` ends a
    segment when no edge joins a node ``≤ i`` to one ``> i``: the running maximum, over nodes
    ``≤ i``, of the farthest node each one's edges reach is ``i`` itself. O(N + E), on the host.
    """
    if num_nodes == 0:
        return []
    src, dst = edge_index.cpu().long()
    node = torch.arange(num_nodes)
    reach = node.scatter_reduce(0, torch.minimum(src, dst), torch.maximum(src, dst), "amax")
    ends = (reach.cummax(0).values == node).nonzero().squeeze(1)
    return torch.diff(ends, prepend=ends.new_full((1,), -1)).tolist()


MIN_DENSE_BLOCK = 16
MAX_DENSE_BLOCK = 512


def packed_block_size(max_graph_size: int) -> int:
    """The block size to pack graphs with for the dense backend (CPU).

    The smallest power of two that holds the largest graph, at least ``MIN_DENSE_BLOCK``, at
    most ``MAX_DENSE_BLOCK`` (a larger graph spans blocks and its batch keeps message passing).
    Why (``benchmarks/bench_dense_cpu.py``, ``results/dense_cpu.json``): the cost is ``S · B``
    scores per head, so the smallest block that fits is the fastest or within noise of it (16
    and 32 tie on graphs of at most 16 nodes). A batch holding one graph of a few hundred nodes
    (ogbg-molsider's reach 492) still runs far faster and in far less memory on 512-slot blocks
    than message passing over its pairs, whose messages are ``Σ n_g² · H · d`` floats against
    the dense scores' ``S · H · B`` (``results/dense_cpu_sider.json``). Past 512 slots a batch
    of one large graph among many small ones pads every block to the large one, so larger
    graphs are left to message passing.
    """
    if max_graph_size < 0:
        raise ValueError(f"max_graph_size must be non-negative, got {max_graph_size}")
    size = MIN_DENSE_BLOCK
    while size < min(max_graph_size, MAX_DENSE_BLOCK):
        size *= 2
    return size
