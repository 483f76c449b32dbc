"""Sparse adjacency inputs of a PyG layer, and attention weights returned in their sparse type.

PyG layers take either ``edge_index`` ``[2, E]`` or a sparse ``adj_t`` ``[N_dst, N_src]`` (torch
sparse COO/CSR/CSC, or a ``torch_sparse.SparseTensor``) whose stored entries are the edges in
order. The attention itself only knows edges, so :func:`edges_of_adj_t` turns an ``adj_t`` into
``edge_index`` (and its values into edge features, by PyG's message-passing convention) on the
way in, and :func:`attention_weights_like` gives the per-edge weights back in the layout the
caller passed, as ``TransformerConv`` does.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.typing import SparseTensor
from torch_geometric.utils import is_torch_sparse_tensor, to_edge_index
from torch_geometric.utils.sparse import set_sparse_value


def edges_of_adj_t(
    adj: Tensor | SparseTensor,
    num_src: int,
    num_dst: int,
    edge_attr: Tensor | None,
    wants_edge_attr: bool,
) -> tuple[Tensor, Tensor | None]:
    """``(edge_index [2, E], edge_attr)`` of a sparse ``adj_t`` ``[N_dst, N_src]``.

    ``edge_index`` is ``[source, target]`` (``adj_t``'s ``(row, col)`` flipped). ``edge_attr`` is
    the caller's where given; else, for a layer that uses edge features (``wants_edge_attr``),
    the features ``adj_t`` carries (:func:`edge_features`); else ``None``.
    """
    if adj.size(0) != num_dst or adj.size(1) != num_src:
        raise ValueError(
            f"sparse adj_t must have shape [N_dst, N_src]=[{num_dst}, {num_src}], "
            f"got {list(adj.shape) if isinstance(adj, Tensor) else list(adj.sizes())}"
        )
    edge_index, values = to_edge_index(adj)
    edge_index = edge_index.flip(0)
    if edge_attr is None and wants_edge_attr:
        edge_attr = edge_features(adj, values)
    return edge_index, edge_attr


def edge_features(adj: Tensor | SparseTensor, values: Tensor) -> Tensor | None:
    """The edge features an ``adj_t`` carries, by PyG's message-passing convention: a
    ``SparseTensor``'s values, or a torch sparse tensor's values when they are ``[E, F]`` (its
    ``[E]`` values are the edge weights of an adjacency, ones when built from ``edge_index``)."""
    if isinstance(adj, SparseTensor):
        return adj.storage.value()
    return values if values.dim() > 1 else None


def attention_weights_like(
    adj: Tensor | SparseTensor | None, edge_index: Tensor, alpha: Tensor
) -> tuple[Tensor, Tensor] | SparseTensor:
    """Per-edge weights ``alpha`` ``[E, H]`` in the form of the layer's graph input.

    ``adj`` ``None`` (an ``edge_index`` input): ``(edge_index, alpha)``; a ``SparseTensor``: a
    ``SparseTensor`` with ``alpha`` as its values; a torch sparse tensor: ``(weights, alpha)``
    with ``weights`` ``[N_dst, N_src, H]`` in ``adj``'s layout (:func:`sparse_weights`).
    """
    if isinstance(adj, SparseTensor):
        return adj.set_value(alpha, layout="coo")
    if adj is not None and is_torch_sparse_tensor(adj):
        return sparse_weights(adj, alpha), alpha
    return edge_index, alpha


def sparse_weights(adj: Tensor, alpha: Tensor) -> Tensor:
    """``alpha`` ``[E, H]`` as a ``[N_dst, N_src, H]`` sparse tensor of ``adj``'s layout and
    indices (its stored entries are the edges, in order)."""
    if adj.dense_dim() == 0:
        return set_sparse_value(adj, alpha)
    size = (adj.size(0), adj.size(1), alpha.size(1))  # hybrid adj: its feature dims go
    if adj.layout == torch.sparse_coo:
        return torch.sparse_coo_tensor(adj.indices(), alpha, size).coalesce()
    if adj.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(adj.crow_indices(), adj.col_indices(), alpha, size)
    return torch.sparse_csc_tensor(adj.ccol_indices(), adj.row_indices(), alpha, size)
