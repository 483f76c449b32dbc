"""Parallel edges → unique (dst, src) pairs with a multiplicity.

A mod sees each node pair once, so edges that repeat a pair collapse into one *pair*; the layer
adds ``log(multiplicity)`` (or the log-sum-exp of per-edge biases) to reproduce PyG's softmax
over edges, where a duplicate edge counts twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(eq=False)
class EdgePairs:
    """The unique pairs of a set of edges.

    * ``pair_index``: ``[2, P]`` (src, dst) slot pairs, sorted by (dst, src).
    * ``edge_pair``: ``[E]`` the pair of each edge.
    * ``multiplicity``: ``[P]`` edges per pair.
    * ``has_parallel_edges``: whether some pair has several edges (``E > P``, known on the host).
    """

    pair_index: Tensor
    edge_pair: Tensor
    multiplicity: Tensor
    has_parallel_edges: bool

    @property
    def num_pairs(self) -> int:
        return self.pair_index.size(1)

    def apply(self, fn: Callable[[Tensor], Tensor]) -> EdgePairs:
        return EdgePairs(
            fn(self.pair_index), fn(self.edge_pair), fn(self.multiplicity), self.has_parallel_edges
        )


def unique_pairs(src: Tensor, dst: Tensor, num_src: int) -> EdgePairs:
    """Deduplicate edges ``src[e] → dst[e]`` (slot indices, ``[E]`` each).

    ``torch.unique`` has a data-dependent output size: on CUDA this is the build's one sync,
    which is why structures are built in the data pipeline, on the CPU.
    """
    key = dst.long() * num_src + src.long()
    unique_key, edge_pair, multiplicity = torch.unique(
        key, sorted=True, return_inverse=True, return_counts=True
    )
    pair_index = torch.stack([unique_key % num_src, unique_key // num_src])
    return EdgePairs(pair_index, edge_pair, multiplicity, key.numel() > unique_key.numel())
