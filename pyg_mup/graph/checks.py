"""Input validation shared by the structure builders and the layers.

Every check raises ``TypeError``/``ValueError`` naming the argument and what was expected, so bad
input never surfaces as an opaque indexing, CUDA or Triton error deep inside attention. Checks
that read values copy them to the host once per check: they run where structures are built (the
data pipeline), never inside a training step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_positive_int(value: object, name: str, allow_none: bool = False) -> None:
    """``value`` must be a positive ``int`` (``True`` is not one), or ``None`` if allowed."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        expected = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def check_real_device(tensor: Tensor, name: str) -> None:
    """Structures are built from index *values*; ``meta`` tensors have none."""
    if tensor.device.type == "meta":
        raise ValueError(
            f"{name} is on the meta device: graph structures need real index values "
            "(build models on meta, but run them on cpu or cuda tensors)"
        )


def check_edge_index(edge_index: Tensor, num_src: int, num_dst: int) -> None:
    """``edge_index`` must be an integer ``[2, E]`` tensor with src < num_src, dst < num_dst."""
    if not isinstance(edge_index, Tensor):
        raise TypeError(
            f"edge_index must be a torch.Tensor [2, num_edges], got {type(edge_index).__name__}"
        )
    if edge_index.dtype not in (torch.long, torch.int32):
        raise TypeError(
            f"edge_index must have dtype torch.long or torch.int32, got {edge_index.dtype}"
        )
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, num_edges], got {list(edge_index.shape)}")
    check_real_device(edge_index, "edge_index")
    if edge_index.numel() == 0:
        return
    low, max_src, max_dst = torch.stack(
        [edge_index.min(), edge_index[0].max(), edge_index[1].max()]
    ).tolist()
    if low < 0:
        raise ValueError("edge_index must not hold negative node indices")
    if max_src >= num_src or max_dst >= num_dst:
        raise ValueError(
            f"edge_index refers to node {max(max_src, max_dst)} but the graph has "
            f"num_nodes=({num_src}, {num_dst}) (src, dst)"
        )


def check_batch(batch: Tensor, num_nodes: int) -> None:
    """``batch`` must be a sorted, non-negative integer ``[N]`` vector (PyG's ``Batch.batch``)."""
    if not isinstance(batch, Tensor) or batch.dtype.is_floating_point or batch.dtype == torch.bool:
        raise TypeError("batch must be an integer tensor of shape [num_nodes]")
    if batch.shape != (num_nodes,):
        raise ValueError(
            f"batch must have shape [num_nodes]=[{num_nodes}], got {list(batch.shape)}"
        )
    check_real_device(batch, "batch")
    if num_nodes == 0:
        return
    negative, unsorted = torch.stack([batch[0] < 0, (batch[1:] < batch[:-1]).any()]).tolist()
    if negative:
        raise ValueError("batch must hold non-negative graph indices")
    if unsorted:
        raise ValueError(
            "batch must be sorted (nodes of each graph contiguous), as PyG batches are"
        )


def check_graph_sizes(sizes: Sequence[int], num_nodes: int) -> None:
    """Per-graph node counts (from ``ptr``) must be non-negative and sum to ``num_nodes``."""
    if any(size < 0 for size in sizes) or sum(sizes) != num_nodes:
        raise ValueError(
            f"ptr must be non-decreasing from 0 to num_nodes={num_nodes} (PyG's Batch.ptr), "
            f"got graph sizes summing to {sum(sizes)}"
        )


def check_edges_within_graphs(edge_index: Tensor, batch: Tensor) -> None:
    """Global attention places each edge's bias on a pair of one graph: an edge between two
    graphs of a batch has no such pair, and would silently bias another one."""
    if edge_index.numel() == 0:
        return
    src_graph, dst_graph = batch[edge_index[0]], batch[edge_index[1]]
    crossing = (src_graph != dst_graph).nonzero()
    if crossing.numel():
        edge = int(crossing[0, 0])
        raise ValueError(
            f"edge_index[:, {edge}] = {edge_index[:, edge].tolist()} joins graph "
            f"{int(src_graph[edge])} to graph {int(dst_graph[edge])}: mode='global' attends "
            "within each graph, so every edge must stay inside its graph"
        )


def check_node_features(x: Tensor, name: str, channels: int | None) -> None:
    """``x`` must be a floating ``[N, channels]`` tensor."""
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor of shape [num_nodes, channels]")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [num_nodes, channels], got {list(x.shape)}")
    if channels is not None and channels > 0 and x.size(1) != channels:
        raise ValueError(f"{name} must have {channels} channels, got {x.size(1)}")


def check_dtype(value: Tensor, name: str, dtype: torch.dtype) -> None:
    """Floating inputs must match the layer's parameters (autocast aside): a float64 ``x`` into a
    float32 layer would fail inside a matmul with a message naming no argument."""
    if value.dtype != dtype and not torch.is_autocast_enabled(value.device.type):
        raise TypeError(
            f"{name} has dtype {value.dtype} but the layer's parameters are {dtype}: convert one "
            f"(e.g. {name}.to({dtype}) or layer.to({value.dtype}))"
        )


def check_edge_tensor(
    value: Tensor, name: str, num_edges: int, width: int | None, integer: bool = False
) -> None:
    """Per-edge input: ``[E, width]`` floats (``edge_attr``) or ``[E]`` integers (``edge_type``)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if integer:
        if value.dtype.is_floating_point or value.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor of shape [num_edges]")
        if value.shape != (num_edges,):
            raise ValueError(
                f"{name} must have shape [num_edges]=[{num_edges}], got {list(value.shape)}"
            )
        return
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor of shape [num_edges, {width}]")
    shaped = value.view(-1, 1) if value.dim() == 1 else value
    if shaped.dim() != 2 or shaped.size(0) != num_edges:
        raise ValueError(
            f"{name} must have one row per edge ([{num_edges}, {width}]), got {list(value.shape)}"
        )
    if width is not None and shaped.size(1) != width:
        raise ValueError(f"{name} must have edge_dim={width} columns, got {shaped.size(1)}")


def check_edge_distance(edge_distance: Tensor, num_edges: int) -> None:
    """Caller distances: one non-negative integer per edge."""
    if not isinstance(edge_distance, Tensor) or edge_distance.dtype.is_floating_point:
        raise TypeError("edge_distance must be an integer tensor of shape [num_edges]")
    if edge_distance.shape != (num_edges,):
        raise ValueError(
            f"edge_distance must have shape [num_edges]=[{num_edges}], "
            f"got {list(edge_distance.shape)}"
        )
    if num_edges and int(edge_distance.min()) < 0:
        raise ValueError("edge_distance must be non-negative")


def split_num_nodes(num_nodes: int | tuple[int, int]) -> tuple[int, int]:
    """``(N_src, N_dst)`` from ``N`` or a bipartite pair."""
    if isinstance(num_nodes, tuple):
        if len(num_nodes) != 2:
            raise ValueError(f"num_nodes must be an int or (N_src, N_dst), got {num_nodes!r}")
        num_src, num_dst = num_nodes
    else:
        num_src = num_dst = num_nodes
    for value in (num_src, num_dst):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"num_nodes must hold non-negative ints, got {num_nodes!r}")
    return num_src, num_dst
