"""``NodeTransformer``: node property prediction (one prediction per node)."""

from __future__ import annotations

from torch import Tensor, nn

from pyg_mup.graph import GraphStructure
from pyg_mup.mup import MuReadout

from .block import TransformerBlock
from .encoders import FeatureEncoder, FeatureSpec


class NodeTransformer(nn.Module):
    r"""Encoders → ``layers`` pre-norm blocks of local attention → LayerNorm → per-node readout.

    Attention runs along the edges only (a node attends over its in-neighbours), so memory is
    O(N + E) and the model runs full-batch on graphs that fit, or on neighbour-sampled
    subgraphs (PyG's ``NeighborLoader``) of large ones, predicting the seed nodes.

    Args:
        out_channels: predictions per node (tasks, or classes for multi-class).
        width, layers, heads, dropout, edge_channels, ffn_ratio, readout_zero_init,
            output_mult: as in :class:`~pyg_mup.models.GraphTransformer`.
        node_features: float feature size, or ``None`` (a learned vector per node).
        edge_features: float edge-feature size, or ``None``.

    Shapes: ``x`` ``[N, F]`` (or ``None``), ``edge_index`` ``[2, E]``, ``edge_attr``
    ``[E, F_e]`` → ``[N, out_channels]``.
    """

    def __init__(
        self,
        out_channels: int,
        width: int = 128,
        layers: int = 3,
        heads: int = 4,
        dropout: float = 0.0,
        node_features: FeatureSpec = None,
        edge_features: FeatureSpec = None,
        edge_channels: int = 32,
        ffn_ratio: int = 2,
        readout_zero_init: bool = True,
        output_mult: float = 1.0,
    ) -> None:
        super().__init__()
        self.width = width
        self.node_encoder = FeatureEncoder(node_features, width)
        self.edge_encoder = FeatureEncoder(edge_features, edge_channels) if edge_features else None
        edge_dim = edge_channels if edge_features else None
        self.blocks = nn.ModuleList(
            TransformerBlock(width, heads, "local", dropout, edge_dim, None, ffn_ratio)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)
        self.head = MuReadout(
            width, out_channels, readout_zero_init=readout_zero_init, output_mult=output_mult
        )

    def forward(
        self,
        x: Tensor | None,
        edge_index: Tensor,
        edge_attr: Tensor | None = None,
        num_nodes: int | None = None,
    ) -> Tensor:
        """Predict ``[N, out_channels]`` for every node of the (sub)graph."""
        if num_nodes is None:
            num_nodes = x.size(0)
        h = self.node_encoder(x, num_nodes)
        e = self.edge_encoder(edge_attr, edge_index.size(1)) if self.edge_encoder else None
        structures = {"local": GraphStructure.build(edge_index, num_nodes, mode="local")}
        for block in self.blocks:
            h = block(h, structures, e)
        return self.head(self.norm(h))
