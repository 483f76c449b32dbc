"""``FlexGraphConv``: the PyG-facing graph attention layer (a drop-in for ``TransformerConv``)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Embedding, Parameter
from torch_geometric.nn import Linear
from torch_geometric.typing import SparseTensor
from torch_geometric.utils import is_sparse

from pyg_mup.graph import MODES, GraphStructure
from pyg_mup.graph.checks import check_dtype, check_positive_int
from pyg_mup.score_mods import ScoreMod, compose, pair_bias, sigmoid_gate

from .attention import MuPFlexAttention
from .prebuilt import check_edge_inputs, check_structure, graph_input
from .sparse_inputs import attention_weights_like, edges_of_adj_t


class FlexGraphConv(MuPFlexAttention):
    r"""Graph attention on FlexAttention, local (along edges) or global (within each graph).

    With ``mode='local'`` node :math:`i` attends over the sources of its incoming edges
    :math:`j \to i`, exactly as :class:`~torch_geometric.nn.conv.TransformerConv` (without
    ``edge_dim``, weights copied over, both give the same output). With ``mode='global'`` it
    attends over every node of its own graph (from ``batch``; without ``batch`` the input is one
    graph), Graphormer/GPS-style, and edges enter only through score biases and gates:

    .. math::
        e^h_{ij} = s \, \langle \mathbf{q}^h_i, \mathbf{k}^h_j \rangle \cdot
        \sigma\big(g^h_{\mathrm{type}}(i, j) + g^h_{\mathrm{dist}}(d_{ij})\big)
        + \log \sum_{e: j \to i} \exp\big(\mathbf{w}_h^\top \mathbf{a}_e\big)
        + b^h_{\mathrm{dist}}(d_{ij})

    * the edge bias (``edge_dim``): a per-head linear map of ``edge_attr``, combined over
      parallel edges by log-sum-exp, so duplicate edges count as many times as they appear, as in
      TransformerConv's softmax over edges (without ``edge_dim`` each edge contributes 0, i.e. the
      pair gets ``log(multiplicity)``). Pairs without an edge (global mode) get a learned
      ``no_edge_bias`` per head.
    * the gate (``num_edge_types`` and/or ``max_distance``): a per-head sigmoid of an edge-type
      embedding (the mean over a pair's parallel edges; a "no edge" type in global mode) plus a
      distance embedding, multiplying the score.
    * distances :math:`d_{ij}` (``max_distance``): the caller's ``edge_distance`` where given, else
      shortest-path hop counts from ``j`` to ``i`` within each graph (global mode, computed once
      per batch by :class:`~pyg_mup.GraphStructure`) or 0/1 for self-loops/edges (local mode),
      in ``0 … max_distance``; farther and unreachable pairs get ``max_distance + 1``.

    The graph structure (block mask, look-ups, distances) is built once per batch: build it with
    :meth:`GraphStructure.build` (or in the data loader, :mod:`pyg_mup.graph.collate`) and pass
    ``structure=`` to every layer of a model, or let each layer build its own. A structure built
    for other edges, another batch, or edges edited in place since raises rather than being
    reused.

    Args:
        in_channels: input size, or ``(src, dst)`` sizes for bipartite graphs (local mode).
        out_channels: channels per head.
        heads: number of heads.
        concat: concatenate heads (``heads * out_channels`` outputs) or average them.
        dropout: attention dropout (message-passing backend only).
        edge_dim: size of ``edge_attr``; enables the learned edge bias.
        mode: ``'local'`` or ``'global'``.
        bias: learn biases in the projections.
        root_weight: add the skip projection of each node's own features.
        backend: ``'auto'`` (see :class:`MuPFlexAttention`), ``'flex'`` or
            ``'message_passing'``.
        num_edge_types: number of edge types of ``edge_type``; enables the type gate.
        max_distance: largest hop distance embedded; enables the distance gate and bias.
        block_size: block size of structures this layer builds (default: see
            :meth:`GraphStructure.build`).
        layout: node layout of structures this layer builds (``'auto'``: packed graphs in
            global mode, none in local; ``None``; ``'rcm'`` for large graphs in local mode);
            see :mod:`pyg_mup.graph.layout`.
        attn_mult: attention logit multiplier (μP hyperparameter).

    Shapes:
        - **input:** ``x`` ``[N, F]`` or ``([N_src, F_src], [N_dst, F_dst])``; ``edge_index``
          ``[2, E]`` or a sparse ``adj_t`` (``[N_dst, N_src]``: torch sparse COO/CSR/CSC or
          ``SparseTensor``, whose stored entries are the edges in order); ``edge_attr``
          ``[E, edge_dim]``; ``batch`` ``[N]``; ``edge_type``/``edge_distance`` ``[E]``. As in
          PyG's message passing, an ``adj_t`` carrying edge features (a ``SparseTensor``'s
          values, or the ``[E, F]`` values of a hybrid torch sparse tensor) gives the
          ``edge_attr`` of a layer with ``edge_dim`` when none is passed; layers without
          ``edge_dim`` ignore them (an adjacency's edge weights are not features).
        - **output:** ``[N_dst, heads * out_channels]`` or ``[N_dst, out_channels]``, and with
          ``return_attention_weights=True`` also the weights, as ``TransformerConv`` returns
          them: ``(edge_index [2, E], alpha [E, heads])`` (local, ``edge_index`` input); for a
          torch sparse ``adj_t``, ``(adj [N_dst, N_src, heads], alpha)`` with ``adj`` in
          ``adj_t``'s layout; for a ``SparseTensor``, a ``SparseTensor`` of the weights;
          ``(pairs [2, Σ n_g²], alpha [Σ n_g², heads])`` in global mode.

    ``torch.compile`` compiles the layer as it is (the structure build, when the layer builds
    one, runs between graph breaks). ``torch.export`` needs a prebuilt structure: building one
    is data-dependent (its sizes depend on the edges' values), so an export that would build
    it raises. Export a module that holds the structure and calls the layer with
    ``structure=`` and neither ``edge_index`` nor ``batch``: the structure becomes a constant
    of the exported program, which then serves that one graph (``edge_type`` ranges are
    asserted when the program runs). ``torch.jit.script`` raises: TorchScript is deprecated
    in torch and cannot script FlexAttention.
    """

    def __init__(
        self,
        in_channels: int | tuple[int, int],
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        dropout: float = 0.0,
        edge_dim: int | None = None,
        mode: str = "local",
        bias: bool = True,
        root_weight: bool = True,
        backend: str = "auto",
        num_edge_types: int | None = None,
        max_distance: int | None = None,
        block_size: int | None = None,
        layout: str | None = "auto",
        attn_mult: float = 1.0,
        **kwargs,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "global" and isinstance(in_channels, tuple):
            raise ValueError("mode='global' attends within one node set; in_channels must be int")
        for name, value in (
            ("edge_dim", edge_dim),
            ("num_edge_types", num_edge_types),
            ("max_distance", max_distance),
            ("block_size", block_size),
        ):
            check_positive_int(value, name, allow_none=True)
        super().__init__(
            in_channels,
            out_channels,
            heads=heads,
            concat=concat,
            dropout=dropout,
            bias=bias,
            root_weight=root_weight,
            backend=backend,
            attn_mult=attn_mult,
            **kwargs,
        )
        self.edge_dim = edge_dim
        self.mode = mode
        self.num_edge_types = num_edge_types
        self.max_distance = max_distance
        self.block_size = block_size
        self.layout = layout

        self.lin_edge = Linear(edge_dim, heads, bias=False) if edge_dim else None
        self.no_edge_bias = Parameter(torch.empty(heads)) if mode == "global" else None
        self.gate_type = Embedding(num_edge_types + 1, heads) if num_edge_types else None
        if max_distance:
            self.gate_distance = Embedding(max_distance + 2, heads)
            self.distance_bias = Embedding(max_distance + 2, heads)
        else:
            self.gate_distance = self.distance_bias = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Projections as in PyG; biases and gate logits start at zero (gates at 1/2)."""
        super().reset_parameters()
        if self.lin_edge is not None:
            self.lin_edge.reset_parameters()
        if self.no_edge_bias is not None:
            torch.nn.init.zeros_(self.no_edge_bias)
        for embedding in (self.gate_type, self.gate_distance, self.distance_bias):
            if embedding is not None:
                torch.nn.init.zeros_(embedding.weight)

    def forward(
        self,
        x: Tensor | tuple[Tensor, Tensor],
        edge_index: Tensor | SparseTensor | None = None,
        edge_attr: Tensor | None = None,
        batch: Tensor | None = None,
        edge_type: Tensor | None = None,
        edge_distance: Tensor | None = None,
        structure: GraphStructure | None = None,
        return_attention_weights: bool | None = None,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]] | tuple[Tensor, SparseTensor]:
        """Attend; see the class docstring for shapes.

        ``structure`` reuses a prebuilt one: then ``edge_index`` (and ``batch``) may be left out —
        the structure holds them — or given, and checked against it.
        """
        edge_index = graph_input(edge_index, batch, structure, return_attention_weights)
        x_src, x_dst = self._split_features(x)
        num_src, num_dst = x_src.size(0), x_dst.size(0)
        adj = edge_index if is_sparse(edge_index) else None
        if adj is not None:
            edge_index, edge_attr = edges_of_adj_t(
                adj, num_src, num_dst, edge_attr, self.edge_dim is not None
            )
        if edge_attr is not None and edge_attr.dtype.is_floating_point:
            check_dtype(edge_attr, "edge_attr", self.lin_query.weight.dtype)
        if structure is None:
            structure = GraphStructure.build(
                edge_index,
                (num_src, num_dst) if isinstance(x, tuple | list) else num_dst,
                batch,
                mode=self.mode,
                max_distance=self.max_distance,
                edge_distance=edge_distance,
                block_size=self.block_size,
                layout=self.layout,
                flex=True if self.backend == "flex" else None,
            )
        else:
            check_structure(
                structure,
                mode=self.mode,
                max_distance=self.max_distance,
                edge_index=edge_index,
                num_src=num_src,
                num_dst=num_dst,
                edge_distance=edge_distance,
                batch=batch,
            )

        out, alpha = self.attend(
            x, structure, bool(return_attention_weights), edge_attr=edge_attr, edge_type=edge_type
        )
        if not return_attention_weights:
            return out
        if self.mode == "global":
            return out, (structure.attention_pairs_of_nodes(), alpha)
        alpha = alpha[structure.edge_pair] * structure.edge_share(self._edge_bias(edge_attr))
        return out, attention_weights_like(adj, edge_index, alpha)

    # --------------------------------------------------------------------------- mods
    def score_mod(
        self,
        structure: GraphStructure,
        edge_attr: Tensor | None = None,
        edge_type: Tensor | None = None,
    ) -> ScoreMod | None:
        """The gate (times the score), then the edge and distance biases of this batch.

        Every learned value is materialised per attended pair (:meth:`GraphStructure.pair_values`)
        so that FlexAttention's backward never funnels many scores into one row.
        """
        check_edge_inputs(
            structure.edge_pair.numel(), self.edge_dim, self.num_edge_types, edge_attr, edge_type
        )
        row_of = structure.pair_row
        gate = None
        if self.gate_type is not None or self.gate_distance is not None:
            type_logits = (
                self._pair_type_logits(structure, edge_type) if self.gate_type is not None else None
            )
            distance_logits = self.gate_distance.weight if self.gate_distance is not None else None
            gate_logits = structure.pair_values(
                type_logits, self._no_edge_type_logit(), distance_logits
            )
            gate = sigmoid_gate(row_of, gate_logits)
        edge_bias = self._pair_edge_bias(structure, edge_attr)
        distance_bias = self.distance_bias.weight if self.distance_bias is not None else None
        bias = None
        if edge_bias is not None or distance_bias is not None:
            bias = pair_bias(row_of, structure.pair_values(edge_bias, None, distance_bias))
        return compose(gate, bias)

    def _edge_bias(self, edge_attr: Tensor | None) -> Tensor | None:
        """``[E, H]`` per-edge bias ``w_h^T a_e``, or None without ``edge_dim``."""
        if self.lin_edge is None:
            return None
        return self.lin_edge(edge_attr.reshape(-1, self.edge_dim))

    def _pair_edge_bias(self, structure: GraphStructure, edge_attr: Tensor | None) -> Tensor | None:
        """``[P, H]`` edge bias of each edge pair: the log-sum-exp over its parallel edges.

        In global mode every pair without an edge gets ``no_edge_bias``. A softmax ignores a
        shift shared by a whole row, and each query's row is its whole graph, so that equals
        giving edge pairs ``lse - no_edge_bias`` and the others 0 — which keeps ``no_edge_bias``
        out of the rows that every non-edge entry would otherwise read (see
        :mod:`pyg_mup.graph.tables` for why shared rows are slow).
        """
        edge_bias = self._edge_bias(edge_attr)
        if edge_bias is None:
            if not structure.has_parallel_edges and self.no_edge_bias is None:
                return None
            pair = structure.pair_multiplicity.to(self.lin_query.weight.dtype).log()
            pair = pair.unsqueeze(1).expand(-1, self.heads)
        else:
            pair = structure.edge_to_pair(edge_bias, reduce="logsumexp")
        if self.no_edge_bias is not None:
            pair = pair - self.no_edge_bias.to(pair.dtype)
        return pair

    def _pair_type_logits(self, structure: GraphStructure, edge_type: Tensor) -> Tensor:
        """``[P, H]`` type gate logits: the mean over each pair's parallel edges (so the gate is a
        property of the node pair, as the flex path needs)."""
        return structure.edge_to_pair(self.gate_type(edge_type.long()), reduce="mean")

    def _no_edge_type_logit(self) -> Tensor | None:
        """``[H]`` gate logit of pairs without an edge (global mode), or None."""
        if self.gate_type is None or self.mode != "global":
            return None
        return self.gate_type.weight[self.num_edge_types]

    def __repr__(self) -> str:
        extras = "".join(
            f", {name}={getattr(self, name)}"
            for name in ("edge_dim", "num_edge_types", "max_distance")
            if getattr(self, name) is not None
        )
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"heads={self.heads}, mode='{self.mode}'{extras})"
        )
