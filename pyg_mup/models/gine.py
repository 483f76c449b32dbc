"""``GINEVirtualNode``: the classic-GNN baseline (OGB's GIN-virtual, with edge features).

The honest peer of :class:`~pyg_mup.models.GraphTransformer`: tuned message-passing GNNs match
graph transformers on many graph-level sets (arXiv 2502.09263), so the transformer has to beat
this model at the same parameter count and tuning budget. It has the transformer's encoders,
optional :class:`~pyg_mup.models.encodings.NodeEncodings` and a :class:`MuReadout` head, so the
same loop trains it under μP or SP.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch_geometric.nn import GINConv, GINEConv, global_mean_pool

from pyg_mup.mup import MuReadout

from .encoders import (
    FeatureEncoder,
    FeatureSpec,
    count_nodes,
    encode_nodes,
    graph_index,
    node_encoders,
)
from .encodings import Encoding
from .virtual_node import ogb_mlp, update_virtual_node, virtual_node_parameters


class GINEVirtualNode(nn.Module):
    r"""OGB's GIN-virtual design with residuals, mean pooling and a μP readout.

    Layer ``l`` (``h⁰`` from the node encoder, plus the node encodings if any):

    .. math::
        \mathbf{u}^l_i &= \mathbf{h}^l_i + \mathbf{v}^l_{g(i)} \\
        \mathbf{h}^{l+1}_i &= \mathbf{u}^l_i + \mathrm{Drop}(\mathrm{ReLU}(\mathrm{BN}(
            \mathrm{GINE}^l(\mathbf{u}^l, \mathbf{e}^l)_i))) \\
        \mathbf{v}^{l+1}_g &= \mathbf{v}^l_g + \mathrm{Drop}(\mathrm{MLP}^l_v(
            \textstyle\sum_{i \in g} \mathbf{u}^l_i + \mathbf{v}^l_g))

    with ``GINE(u, e)_i = MLP((1 + ε) u_i + Σ_j ReLU(u_j + e_ij))`` (PyG
    :class:`~torch_geometric.nn.GINEConv`, trainable ``ε``; :class:`GINConv` without edge
    features), ``e^l`` the edge features encoded at ``width`` by layer ``l``'s own encoder (OGB
    encodes bonds per layer, and GINE adds them to node features), no ReLU after the last layer,
    and the virtual node ``v⁰ = 0`` (a learned start vector, zero-initialised as in OGB). Then
    mean pooling and :class:`MuReadout`.

    Every ``width × 2·width`` MLP matrix is a μP hidden matrix; encoders, BatchNorms and the
    virtual-node start vector have one width dimension.

    Args:
        out_channels: predictions per graph.
        width: node feature size.
        layers: message-passing layers.
        dropout: dropout on each layer's output and the virtual-node update.
        node_features: ``'atom'``, a float feature size, or ``None`` (see :class:`FeatureEncoder`).
        edge_features: ``'bond'``, a float feature size, or ``None`` (no edge features: GIN).
        encodings: node encoding specs such as ``('rwse:16', 'degree')``.
        virtual_node: use the virtual node.
        readout_zero_init: start the readout at zero (predictions start at the bias).
        output_mult: the readout's output multiplier, as in
            :class:`~pyg_mup.models.GraphTransformer`.

    Shapes: ``x`` ``[N, F]`` (or ``None``), ``edge_index`` ``[2, E]``, ``edge_attr``
    ``[E, F_e]``, ``batch`` ``[N]``, ``encodings[name]`` ``[N, K]`` →
    ``[num_graphs, out_channels]``.
    """

    def __init__(
        self,
        out_channels: int,
        width: int = 128,
        layers: int = 4,
        dropout: float = 0.0,
        node_features: FeatureSpec = "atom",
        edge_features: FeatureSpec = "bond",
        encodings: Iterable[str | Encoding] = (),
        virtual_node: bool = True,
        readout_zero_init: bool = True,
        output_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be at least 1, got {layers}")
        self.width = width
        self.layers = layers
        self.node_encoder, self.encodings = node_encoders(node_features, width, encodings)
        self.edge_encoders = (
            nn.ModuleList(FeatureEncoder(edge_features, width) for _ in range(layers))
            if edge_features is not None
            else None
        )
        conv_type = GINEConv if edge_features is not None else GINConv
        self.convs = nn.ModuleList(
            conv_type(ogb_mlp(width, width, False), train_eps=True) for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(width) for _ in range(layers))
        self.virtual_start: nn.Parameter | None = None
        self.virtual_mlps: nn.ModuleList | None = None
        if virtual_node:
            self.virtual_start, self.virtual_mlps = virtual_node_parameters(width, layers - 1)
        self.dropout = nn.Dropout(dropout)
        self.head = MuReadout(
            width, out_channels, readout_zero_init=readout_zero_init, output_mult=output_mult
        )

    def forward(
        self,
        x: Tensor | None,
        edge_index: Tensor,
        edge_attr: Tensor | None = None,
        batch: Tensor | None = None,
        *,
        num_graphs: int | None = None,
        encodings: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """Predict ``[num_graphs, out_channels]``. Without ``num_graphs`` it is read from
        ``batch`` (a device sync); ``encodings`` holds the stored node encodings
        (:func:`~pyg_mup.models.encoders.encode_nodes`)."""
        num_nodes = count_nodes(x, batch)
        batch, num_graphs = graph_index(batch, num_graphs, num_nodes, edge_index)
        h = encode_nodes(
            self.node_encoder, self.encodings, x, encodings, edge_index, num_nodes, batch
        )
        if self.edge_encoders is not None and edge_attr is None:
            raise ValueError("edge_attr is required: the model was built with edge_features")

        virtual = None
        if self.virtual_start is not None:
            virtual = self.virtual_start.expand(num_graphs, -1)
        for layer in range(self.layers):
            if virtual is not None:
                h = h + virtual[batch]
            if self.edge_encoders is not None:
                e = self.edge_encoders[layer](edge_attr)
                out = self.convs[layer](h, edge_index, e)
            else:
                out = self.convs[layer](h, edge_index)
            out = self.norms[layer](out)
            last = layer == self.layers - 1
            if not last:
                out = out.relu()
            if virtual is not None and not last:
                virtual = update_virtual_node(
                    self.virtual_mlps[layer], self.dropout, h, virtual, batch, num_graphs
                )
            h = h + self.dropout(out)
        return self.head(global_mean_pool(h, batch, size=num_graphs))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (works on ``meta`` models, so sizes are free to compare)."""
    return sum(p.numel() for p in model.parameters())


def matched_width(target_parameters: int, layers: int, multiple: int = 4, **kwargs) -> int:
    """The :class:`GINEVirtualNode` width (a multiple of ``multiple``) whose parameter count is
    closest to ``target_parameters`` at ``layers`` layers (``kwargs`` go to the constructor;
    ``out_channels`` defaults to 1).

    Use it to compare models at equal size: ``matched_width(count_parameters(transformer),
    layers)``. Per layer the transformer with ``attention='both'`` holds about ``10·width²``
    (two attention branches of ``3·width²``, an FFN of ``4·width²``), this model ``8·width²``
    (GINE MLP and virtual-node MLP, ``4·width²`` each), so at equal depth the GINE is about
    1.2× wider (``tests/test_gine.py`` holds measured pairs).
    """
    kwargs.setdefault("out_channels", 1)

    def size(width: int) -> int:
        with torch.device("meta"):
            return count_parameters(GINEVirtualNode(width=width, layers=layers, **kwargs))

    # Every parameter has at most two width dims, so the count is a quadratic in the width:
    # three sizes give it exactly, and its root gives the width.
    s1, s2, s3 = size(1), size(2), size(3)
    a = (s3 - 2 * s2 + s1) / 2
    b = s2 - s1 - 3 * a
    c = s1 - a - b
    root = (-b + math.sqrt(b * b - 4 * a * (c - target_parameters))) / (2 * a)
    low = max(1, math.floor(root / multiple)) * multiple
    return min((low, low + multiple), key=lambda w: abs(a * w * w + b * w + c - target_parameters))
