"""Input encoders: node and edge features → ``[*, width]`` vectors.

Molecules (``ogbg-mol*``) use OGB's ``AtomEncoder``/``BondEncoder`` (one embedding table per
categorical feature column, summed). Other datasets have float features (a linear map) or none
(one learned vector shared by every node). All inits are width-independent, as μP wants of
input layers (and as the SP twin then shares).

The graph-level models share their prologue, the node embedding ``h⁰`` (:func:`node_encoders`
builds it, :func:`encode_nodes` computes it). It is functions over modules the model holds as
``node_encoder`` and ``encodings``, not a module of its own, so the models' parameter names (and
checkpoints saved by earlier versions) stay as they were.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
from torch import Tensor, nn

from .encodings import Encoding, NodeEncodings

FeatureSpec = str | int | None
"""``'atom'``/``'bond'`` (OGB molecule encoders), ``F`` (float features of size F), or ``None``."""


class ConstantEncoder(nn.Module):
    """One learned vector for every row, for graphs without features: ``[n] → [n, width]``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)

    def forward(self, num_rows: int) -> Tensor:
        return self.weight.expand(num_rows, -1)


class FeatureEncoder(nn.Module):
    """Encode a feature tensor (or its absence) into ``[n, width]``.

    Args:
        spec: ``'atom'``, ``'bond'``, an input size ``F``, or ``None`` (no features).
        width: output size.

    Shapes: ``x`` ``[n, 9]`` (atom), ``[n, 3]`` (bond), ``[n, F]`` or ``[n]`` (float),
    ignored with ``None`` (pass ``num_rows``). Output ``[n, width]``.
    """

    def __init__(self, spec: FeatureSpec, width: int) -> None:
        super().__init__()
        self.spec = spec
        if spec == "atom":
            self.encoder: nn.Module = AtomEncoder(width)
        elif spec == "bond":
            self.encoder = BondEncoder(width)
        elif spec is None:
            self.encoder = ConstantEncoder(width)
        elif isinstance(spec, int) and spec > 0:
            self.encoder = nn.Linear(spec, width)
        else:
            raise ValueError(f"feature spec must be 'atom', 'bond', a positive int or None: {spec}")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Embeddings N(0, 1/columns), so their sum has unit variance at every width (OGB's
        xavier init would shrink it as 1/sqrt(width)); linear maps keep PyTorch's fan-in init."""
        if isinstance(self.encoder, (AtomEncoder, BondEncoder)):
            tables = [m for m in self.encoder.modules() if isinstance(m, nn.Embedding)]
            for table in tables:
                nn.init.normal_(table.weight, std=1.0 / math.sqrt(len(tables)))
        else:
            self.encoder.reset_parameters()

    def forward(self, x: Tensor | None, num_rows: int | None = None) -> Tensor:
        if self.spec is None:
            if num_rows is None:
                raise ValueError("num_rows is required when there are no features")
            return self.encoder(num_rows)
        if x is None:
            raise ValueError(f"features are required (encoder {self.spec!r})")
        if isinstance(self.spec, int):
            x = x.view(x.size(0), -1).to(self.encoder.weight.dtype)
        return self.encoder(x)


def feature_specs(dataset_name: str, x: Tensor | None, edge_attr: Tensor | None) -> tuple:
    """``(node_spec, edge_spec)`` for a dataset, from its name and one example's tensors."""
    if dataset_name.startswith("ogbg-mol"):
        return "atom", "bond"

    def spec(t: Tensor | None) -> FeatureSpec:
        return None if t is None else (t.view(t.size(0), -1).size(1))

    return spec(x), spec(edge_attr)


def node_encoders(
    node_features: FeatureSpec, width: int, encodings: Iterable[str | Encoding] = ()
) -> tuple[FeatureEncoder, NodeEncodings | None]:
    """``(node_encoder, encodings)`` of a model: the node feature encoder and, given specs such
    as ``('rwse:16', 'degree')``, the node encodings added to it (else ``None``)."""
    encodings = tuple(encodings)
    return FeatureEncoder(node_features, width), (
        NodeEncodings(encodings, width) if encodings else None
    )


def count_nodes(x: Tensor | None, batch: Tensor | None) -> int:
    """``N``: the rows of ``x`` ``[N, F]``, or of ``batch`` ``[N]`` for graphs without node
    features."""
    if x is not None:
        return x.size(0)
    if batch is not None:
        return batch.numel()
    raise ValueError("x or batch is required to know the number of nodes")


def graph_index(
    batch: Tensor | None, num_graphs: int | None, num_nodes: int, edge_index: Tensor
) -> tuple[Tensor, int]:
    """``(batch [N], num_graphs)`` for models that pool or broadcast per graph: a missing
    ``batch`` means one graph, a missing ``num_graphs`` is read from ``batch`` (a device sync)."""
    if batch is None:
        return edge_index.new_zeros(num_nodes), 1
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1
    return batch, num_graphs


def encode_nodes(
    node_encoder: FeatureEncoder,
    encodings: NodeEncodings | None,
    x: Tensor | None,
    stored: dict[str, Tensor] | None,
    edge_index: Tensor,
    num_nodes: int,
    batch: Tensor | None,
) -> Tensor:
    """``h⁰`` ``[N, width]``: the encoded node features plus the node encodings, if any.

    ``stored`` holds the batch's stored encodings (``rwse``, ``lap_pe``: ``[N, K]``, see
    :func:`~pyg_mup.models.encodings.encodings_of`); ``None`` is none, which suffices for
    ``'degree'`` alone (computed from ``edge_index`` ``[2, E]``). ``batch`` ``[N]`` (``None``: one
    graph) draws the Laplacian sign flips per graph.
    """
    h = node_encoder(x, num_nodes)
    if encodings is None:
        return h
    return h + encodings(stored or {}, edge_index, num_nodes, batch)
