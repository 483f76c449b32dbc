"""OGB's virtual node: one extra node per graph, joined to every node, shared by both models.

Attention normalises over the keys and the readout is a mean, so a graph transformer reads a
graph's size at most indirectly; the virtual node reads a **sum** over the graph's nodes (Gilmer
et al. 2017; OGB's GIN-virtual), which carries it. Extensive targets (solubility, free energies)
grow with size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import global_add_pool


def ogb_mlp(width: int, out: int, final_act: bool) -> nn.Sequential:
    """``Linear(width, 2·width) → BN → ReLU → Linear(2·width, out)`` (``→ BN → ReLU``), OGB's.

    Both matrices scale with width in both dimensions (μP hidden matrices); the BatchNorms
    normalise the virtual node's size-dependent sums."""
    layers: list[nn.Module] = [
        nn.Linear(width, 2 * width),
        nn.BatchNorm1d(2 * width),
        nn.ReLU(),
        nn.Linear(2 * width, out),
    ]
    if final_act:
        layers += [nn.BatchNorm1d(out), nn.ReLU()]
    return nn.Sequential(*layers)


def virtual_node_parameters(width: int, updates: int) -> tuple[nn.Parameter, nn.ModuleList]:
    """The start vector ``v⁰ = 0`` ``[width]`` (zero-initialised, as in OGB) and one
    :func:`ogb_mlp` per update (one fewer than the layers: the last layer's update is unread)."""
    start = nn.Parameter(torch.zeros(width))
    return start, nn.ModuleList(ogb_mlp(width, width, True) for _ in range(updates))


def update_virtual_node(
    mlp: nn.Module, dropout: nn.Module, h: Tensor, virtual: Tensor, batch: Tensor, num_graphs: int
) -> Tensor:
    r"""``v ← v + Drop(MLP(Σ_{i∈g} h_i + v_g))``.

    Shapes: ``h`` ``[N, width]`` (the nodes after the virtual node was added), ``virtual``
    ``[num_graphs, width]``, ``batch`` ``[N]`` → ``[num_graphs, width]``.
    """
    pooled = global_add_pool(h, batch, size=num_graphs) + virtual
    return virtual + dropout(mlp(pooled))


class VirtualNodeInput(nn.Module):
    """``v[batch]``: the virtual node's message to each node of its graph, added to the node's
    features before every block. A module of its own (no parameters), so that a depth rule can
    scale it with a forward hook like any residual branch: added at every one of ``L`` blocks,
    an unscaled message would grow the residual stream with depth.

    Shapes: ``virtual`` ``[num_graphs, width]``, ``batch`` ``[N]`` → ``[N, width]``.
    """

    def forward(self, virtual: Tensor, batch: Tensor) -> Tensor:
        return virtual[batch]
