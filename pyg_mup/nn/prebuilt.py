"""A layer called with a prebuilt :class:`~pyg_mup.graph.GraphStructure`, and ``torch.export``.

A structure is built once per batch and shared by every layer of a model, so a layer called with
``structure=`` only checks that it fits the call (:func:`check_structure`): one built for other
edges, another batch or another mode raises rather than being reused. ``torch.export`` needs such
a structure, because building one is data-dependent (its sizes depend on the edges' values), and
it needs the structure to be the only graph input (:func:`graph_input`): the structure becomes a
constant of the exported program, and value checks become runtime asserts
(:func:`check_edge_type_range`, within :func:`check_edge_inputs`: the per-edge inputs against the
structure's edges).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.typing import SparseTensor

from pyg_mup.graph import GraphStructure
from pyg_mup.graph.checks import check_edge_tensor


def graph_input(
    edge_index: Tensor | SparseTensor | None,
    batch: Tensor | None,
    structure: GraphStructure | None,
    return_attention_weights: bool | None,
) -> Tensor | SparseTensor | None:
    """The layer's graph input: ``edge_index`` as given, or, left out beside a prebuilt
    ``structure``, the structure's ``edge_index`` ``[2, E]`` when attention weights are returned
    along it (else ``None``: nothing to check the structure against)."""
    if torch.compiler.is_exporting():
        check_exportable(edge_index, batch, structure)
    if edge_index is None:
        if structure is None:
            raise TypeError("edge_index is required unless a prebuilt structure is given")
        if return_attention_weights:
            return structure.edge_index
    return edge_index


def check_exportable(
    edge_index: Tensor | SparseTensor | None, batch: Tensor | None, structure: object
) -> None:
    """Under ``torch.export``: the structure must be prebuilt and be the only graph input."""
    if structure is None:
        raise RuntimeError(
            "torch.export of FlexGraphConv needs a prebuilt structure: building one inside "
            "forward is data-dependent. Export a module holding GraphStructure.build(...) that "
            "calls the layer with structure= (and no edge_index or batch)"
        )
    if edge_index is not None or batch is not None:
        raise RuntimeError(
            "torch.export of FlexGraphConv with a structure: leave edge_index and batch out "
            "(the structure is a constant of the exported program; comparing them with it "
            "would be data-dependent, and ignoring them could silently serve another graph)"
        )


def check_structure(
    structure: GraphStructure,
    *,
    mode: str,
    max_distance: int | None,
    edge_index: Tensor | None,
    num_src: int,
    num_dst: int,
    edge_distance: Tensor | None,
    batch: Tensor | None,
) -> None:
    """Raise unless ``structure`` serves a layer of ``mode``/``max_distance`` called on this
    graph: ``num_src``/``num_dst`` nodes, ``edge_index`` ``[2, E]`` (if given, compared with the
    one the structure was built from) and ``batch`` ``[N]``."""
    if not isinstance(structure, GraphStructure):
        raise TypeError(f"structure must be a GraphStructure, got {type(structure).__name__}")
    if structure.mode != mode:
        raise ValueError(f"structure was built for mode={structure.mode!r}, layer is {mode!r}")
    if max_distance is not None and (
        structure.max_distance is None or structure.max_distance < max_distance
    ):
        raise ValueError(
            f"layer has max_distance={max_distance}; build the structure with at least "
            f"that max_distance (got {structure.max_distance})"
        )
    if edge_distance is not None:
        raise ValueError("pass edge_distance to GraphStructure.build, not with a structure")
    if (num_src, num_dst) != (structure.num_src, structure.num_dst) or (
        edge_index is not None and not structure.matches(edge_index, num_src, num_dst)
    ):
        raise ValueError(
            "structure was built for another graph (edge_index or node counts differ, or "
            "edge_index was edited in place since): build one GraphStructure per batch"
        )
    structure.check_batch(batch)


def check_edge_inputs(
    num_edges: int,
    edge_dim: int | None,
    num_edge_types: int | None,
    edge_attr: Tensor | None,
    edge_type: Tensor | None,
) -> None:
    """``edge_attr`` ``[E, edge_dim]`` and ``edge_type`` ``[E]`` are given exactly when the
    layer uses them, one row per edge of the structure (``num_edges``)."""
    if edge_dim is not None:
        if edge_attr is None:
            raise ValueError(f"edge_attr [E, {edge_dim}] is required: edge_dim is set")
        check_edge_tensor(edge_attr, "edge_attr", num_edges, edge_dim)
    elif edge_attr is not None:
        raise ValueError("edge_attr was given but the layer has edge_dim=None")
    if num_edge_types is not None:
        if edge_type is None:
            raise ValueError("edge_type [E] is required: num_edge_types is set")
        check_edge_tensor(edge_type, "edge_type", num_edges, None, integer=True)
        if num_edges:
            check_edge_type_range(edge_type, num_edge_types)
    elif edge_type is not None:
        raise ValueError("edge_type was given but the layer has num_edge_types=None")


def check_edge_type_range(edge_type: Tensor, num_edge_types: int) -> None:
    """Non-empty ``edge_type`` ``[E]`` values must be in ``[0, num_edge_types)``: type
    ``num_edge_types`` would silently read the no-edge row. Under ``torch.export``, which cannot
    branch on values, the exported program asserts the range when it runs."""
    message = f"edge_type values must be in [0, num_edge_types={num_edge_types})"
    if torch.compiler.is_exporting():
        torch._check(edge_type.min().item() >= 0, lambda: message)
        torch._check(edge_type.max().item() < num_edge_types, lambda: message)
    elif int(edge_type.min()) < 0 or int(edge_type.max()) >= num_edge_types:
        raise ValueError(message)
