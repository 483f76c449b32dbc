"""Where each node sits in the attention sequence: node orders that make blocks denser.

FlexAttention's cost is the number of (128-query × 128-key) blocks it visits. Two layouts cut it,
both invisible to callers (the layer scatters features into the layout and gathers results back):

* ``'rcm'`` (local mode): reverse Cuthill–McKee order, which puts neighbours at nearby positions,
  so a large sparse graph in random node order touches few blocks instead of ~E of them.
* ``'pack'`` (global mode): graphs that fit in one block never straddle a block boundary (padding
  slots fill the rest), so each query block attends to one key block instead of two or three.

Both return ``node_slot`` (``[N]``, the sequence position of each node) and the sequence length.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import reverse_cuthill_mckee
from torch import Tensor

LAYOUTS = (None, "rcm", "pack")


def rcm_slots(edge_index: Tensor, num_nodes: int) -> Tensor:
    """``[N]`` positions in reverse Cuthill–McKee order of the symmetrised graph (SciPy, CPU)."""
    src, dst = edge_index.cpu().numpy()
    ones = np.ones(src.size, dtype=np.int8)
    adjacency = coo_matrix((ones, (dst, src)), shape=(num_nodes, num_nodes)).tocsr()
    order = reverse_cuthill_mckee((adjacency + adjacency.T).tocsr(), symmetric_mode=True)
    slots = torch.empty(num_nodes, dtype=torch.long)
    slots[torch.from_numpy(order.astype(np.int64))] = torch.arange(num_nodes)
    return slots.to(edge_index.device)


def packed_graph_starts(graph_sizes: Tensor, block_size: int) -> tuple[Tensor, int]:
    """First slot of each graph, next-fit packed into blocks, and the sequence length.

    A graph that does not fit in what is left of the current block starts the next block; one
    larger than a block starts at a block boundary too, so it spans as few blocks as possible.
    """
    starts = []
    position = 0
    for size in graph_sizes.tolist():
        used = position % block_size
        if used and used + size > block_size:
            position += block_size - used
        starts.append(position)
        position += size
    return torch.tensor(starts, dtype=torch.long, device=graph_sizes.device), position
