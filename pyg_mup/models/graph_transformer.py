"""``GraphTransformer``: graph property prediction (one prediction per graph)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch_geometric.nn import global_mean_pool

from pyg_mup.graph import GraphStructure, StructureSpec
from pyg_mup.mup import MuReadout

from .block import TransformerBlock, dropout_or_identity
from .encoders import (
    FeatureEncoder,
    FeatureSpec,
    count_nodes,
    encode_nodes,
    graph_index,
    node_encoders,
)
from .virtual_node import VirtualNodeInput, update_virtual_node, virtual_node_parameters


class GraphTransformer(nn.Module):
    r"""Encoders → ``layers`` pre-norm Transformer blocks (with ``virtual_node``, OGB's virtual
    node between them) → LayerNorm → mean pool → readout.

    The attention structures of a batch (block masks, pair tables, hop distances) are built once
    per batch and shared by every block: in the data loader (:meth:`structure_spec` gives what to
    build, :mod:`pyg_mup.graph.collate`), passed as ``structures=``, or here in :meth:`forward`
    when none are given. The readout is a :class:`MuReadout`, so the model is μP-ready: wrap its
    construction in :func:`pyg_mup.mup.build_mup_model` for μP, or call
    ``set_base_shapes(model, None)`` for the standard-parametrization twin.

    Args:
        out_channels: predictions per graph (tasks, or classes for multi-class).
        width: model width (a multiple of ``heads``).
        layers: number of Transformer blocks.
        heads: attention heads.
        attention: ``'local'`` (along edges), ``'global'`` (all pairs within a graph, with edge
            biases and distance gates) or ``'both'`` (summed, as GPS does).
        dropout: dropout on residual branches and in the FFNs.
        node_features: ``'atom'`` (OGB ``AtomEncoder``), float feature size, or ``None``.
        edge_features: ``'bond'`` (OGB ``BondEncoder``), float feature size, or ``None``.
        max_distance: hop distances embedded by global attention.
        edge_channels: size of the encoded edge features. Fixed, not scaled with ``width``:
            each layer maps them to one bias per head, and a map from the width dimension to a
            fixed size would be a readout under μP.
        ffn_ratio: FFN hidden size over ``width``.
        readout_zero_init: start the readout at zero (predictions start at the bias).
        output_mult: the readout's output multiplier (:class:`MuReadout`), a μP
            hyperparameter tuned at the base width like the lr.
        local_branch: a message-passing branch in every block (``'gine'``, ``'gated'``), GPS's
            local MPNN beside attention; ``None``: none.
        encodings: structural/positional encodings added to the node embeddings, e.g.
            ``('rwse:16', 'lap:8', 'degree')`` (:mod:`pyg_mup.models.encodings`; stored ones are
            computed by the dataset's ``pre_transform``).
        attention_dropout: dropout on attention weights.
        backend: attention backend of every layer (``'auto'``: see
            :func:`pyg_mup.nn.backends.resolve_backend`).
        virtual_node: add OGB's virtual node (:mod:`pyg_mup.models.virtual_node`) to every
            block's input and update it from a sum over the graph between blocks, so that the
            model reads a graph's size directly (attention normalises, the pool is a mean).
            Its updates and its message to the nodes are not branches of the blocks, so
            ``--depth-parametrization`` scales them separately.

    Shapes: ``x`` ``[N, F]`` (or ``None``), ``edge_index`` ``[2, E]``, ``edge_attr``
    ``[E, F_e]``, ``batch`` ``[N]`` → ``[num_graphs, out_channels]``.
    """

    def __init__(
        self,
        out_channels: int,
        width: int = 128,
        layers: int = 4,
        heads: int = 4,
        attention: str = "local",
        dropout: float = 0.0,
        node_features: FeatureSpec = "atom",
        edge_features: FeatureSpec = "bond",
        max_distance: int = 5,
        edge_channels: int = 32,
        ffn_ratio: int = 2,
        readout_zero_init: bool = True,
        output_mult: float = 1.0,
        local_branch: str | None = None,
        encodings: Sequence[str] = (),
        attention_dropout: float = 0.0,
        backend: str = "auto",
        virtual_node: bool = False,
    ) -> None:
        super().__init__()
        self.width = width
        self.attention = attention
        self.max_distance = max_distance if attention != "local" else None
        self.node_encoder, self.encodings = node_encoders(node_features, width, encodings)
        self.edge_encoder = FeatureEncoder(edge_features, edge_channels) if edge_features else None
        edge_dim = edge_channels if edge_features else None
        self.blocks = nn.ModuleList(
            TransformerBlock(
                width,
                heads,
                attention,
                dropout,
                edge_dim,
                self.max_distance,
                ffn_ratio,
                local_branch=local_branch,
                attention_dropout=attention_dropout,
                backend=backend,
            )
            for _ in range(layers)
        )
        self.virtual_start: nn.Parameter | None = None
        self.virtual_mlps: nn.ModuleList | None = None
        self.virtual_input: VirtualNodeInput | None = None
        self.virtual_dropout: nn.Module | None = None
        if virtual_node:
            self.virtual_start, self.virtual_mlps = virtual_node_parameters(width, layers - 1)
            self.virtual_input = VirtualNodeInput()
            self.virtual_dropout = dropout_or_identity(dropout)
        self.norm = nn.LayerNorm(width)
        self.head = MuReadout(
            width, out_channels, readout_zero_init=readout_zero_init, output_mult=output_mult
        )

    def structure_spec(self, target: str = "cpu") -> StructureSpec:
        """What to build per batch for this model running on ``target`` (``'cpu'``/``'cuda'``):
        give it to a :class:`~pyg_mup.graph.StructureLoader` to build structures in the loader."""
        modes = ("local", "global") if self.attention == "both" else (self.attention,)
        return StructureSpec(modes, self.max_distance, target)

    def forward(
        self,
        x: Tensor | None,
        edge_index: Tensor,
        edge_attr: Tensor | None = None,
        batch: Tensor | None = None,
        num_graphs: int | None = None,
        num_nodes: int | None = None,
        *,
        structures: dict[str, GraphStructure] | None = None,
        encodings: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """Predict ``[num_graphs, out_channels]``.

        ``num_graphs`` (host-known, e.g. ``batch.num_graphs``) and prebuilt ``structures`` keep
        the forward free of host syncs; ``encodings`` holds the stored node encodings
        (:func:`~pyg_mup.models.encodings.encodings_of`).
        """
        if num_nodes is None:
            num_nodes = count_nodes(x, batch)
        if structures is None:
            structures = self.structure_spec(edge_index.device.type).build(
                edge_index, num_nodes, batch
            )
        h = encode_nodes(
            self.node_encoder, self.encodings, x, encodings, edge_index, num_nodes, batch
        )
        e = self.edge_encoder(edge_attr, edge_index.size(1)) if self.edge_encoder else None
        virtual = None
        if self.virtual_start is not None:
            batch, num_graphs = graph_index(batch, num_graphs, num_nodes, edge_index)
            virtual = self.virtual_start.expand(num_graphs, -1)
        for layer, block in enumerate(self.blocks):
            if virtual is not None:
                h = h + self.virtual_input(virtual, batch)
                if layer < len(self.blocks) - 1:
                    virtual = update_virtual_node(
                        self.virtual_mlps[layer],
                        self.virtual_dropout,
                        h,
                        virtual,
                        batch,
                        num_graphs,
                    )
            h = block(h, structures, e)
        pooled = global_mean_pool(self.norm(h), batch, size=num_graphs)
        return self.head(pooled)
