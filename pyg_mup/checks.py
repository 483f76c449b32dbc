"""Input validation shared by the structure builder and the layers.

Every check raises ``TypeError``/``ValueError`` naming the argument and what was expected, so bad
input never surfaces as an opaque indexing, CUDA or Triton error deep inside attention.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_edge_index(edge_index: Tensor, num_src: int, num_dst: int) -> None:
    """``edge_index`` must be an integer ``[2, E]`` tensor with src < num_src, dst < num_dst."""
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"edge_index must be a torch.Tensor, got {type(edge_index).__name__}")
    if edge_index.dtype not in (torch.long, torch.int32):
        raise TypeError(
            f"edge_index must have dtype torch.long or torch.int32, got {edge_index.dtype}"
        )
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, num_edges], got {list(edge_index.shape)}")
    if edge_index.numel() == 0:
        return
    # one device-to-host copy for the three reductions (each would be a sync on CUDA)
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
    if num_nodes == 0:
        return
    negative, unsorted = torch.stack([batch[0] < 0, (batch[1:] < batch[:-1]).any()]).tolist()
    if negative:
        raise ValueError("batch must hold non-negative graph indices")
    if unsorted:
        raise ValueError(
            "batch must be sorted (nodes of each graph contiguous), as PyG batches are"
        )


def check_node_features(x: Tensor, name: str, channels: int | None) -> None:
    """``x`` must be a floating ``[N, channels]`` tensor."""
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor of shape [num_nodes, channels]")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [num_nodes, channels], got {list(x.shape)}")
    if channels is not None and channels > 0 and x.size(1) != channels:
        raise ValueError(f"{name} must have {channels} channels, got {x.size(1)}")


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
