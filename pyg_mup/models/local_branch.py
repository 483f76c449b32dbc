"""The local message-passing branch of a GPS-style hybrid block (beside global attention)."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.nn import GINConv, GINEConv, Linear, ResGatedGraphConv

LOCAL_BRANCH_KINDS = ("gine", "gated")


class LocalBranch(nn.Module):
    r"""``Drop(Conv(h, edge_index, edge_attr))``: one PyG message-passing layer at ``width``.

    - ``'gine'``: :class:`~torch_geometric.nn.GINEConv`,
      ``MLP((1 + ε) h_i + Σ_j ReLU(h_j + W_e e_ij))`` with the MLP ``width → width → width``
      (ReLU), as in GraphGPS; without edge features, :class:`~torch_geometric.nn.GINConv`.
    - ``'gated'``: :class:`~torch_geometric.nn.ResGatedGraphConv`,
      ``W_1 h_i + Σ_j σ(W_3 [h_i, ê_ij] + W_4 [h_j, ê_ij]) ⊙ W_2 [h_j, ê_ij]``.
      The edge features are first mapped to ``ê = W_e e`` of size ``width`` (as GINEConv does):
      given ``edge_dim`` directly, its ``[width, width + edge_dim]`` matrices would mix hidden
      columns with fixed-size input columns, and μP's hidden rules (lr and init ∝ 1/width)
      would make the edge columns' contribution vanish as the model widens.

    Every ``width × width`` (or ``width × 2·width``) matrix scales with width in both
    dimensions, so μP treats it as hidden; ``W_e`` ``[width, edge_dim]`` is an input layer.
    No normalisation and no residual: the hybrid block adds the branch to ``h`` and normalises.

    Args:
        kind: ``'gine'`` or ``'gated'``.
        width: node feature size, in and out.
        edge_dim: size of the edge features (``None``: the layer uses none).
        dropout: dropout on the branch output.

    Shapes: ``h`` ``[N, width]``, ``edge_index`` ``[2, E]``, ``edge_attr`` ``[E, edge_dim]``
    (``None`` iff ``edge_dim`` is ``None``) → ``[N, width]``.
    """

    def __init__(
        self, kind: str, width: int, edge_dim: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if kind not in LOCAL_BRANCH_KINDS:
            raise ValueError(f"kind must be one of {LOCAL_BRANCH_KINDS}, got {kind!r}")
        self.kind = kind
        self.width = width
        self.edge_dim = edge_dim
        self.edge_lin: Linear | None = None
        if kind == "gine":
            mlp = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
            self.conv = GINEConv(mlp, edge_dim=edge_dim) if edge_dim is not None else GINConv(mlp)
        else:
            if edge_dim is not None:
                self.edge_lin = Linear(edge_dim, width)
            self.conv = ResGatedGraphConv(
                width, width, edge_dim=width if edge_dim is not None else None
            )
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        if self.edge_lin is not None:
            self.edge_lin.reset_parameters()

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None) -> Tensor:
        if (edge_attr is None) != (self.edge_dim is None):
            given = "None" if edge_attr is None else f"[E, {edge_attr.size(-1)}]"
            raise ValueError(f"edge_attr is {given} but the branch has edge_dim={self.edge_dim}")
        if edge_attr is None:
            return self.dropout(self.conv(h, edge_index))
        if self.edge_lin is not None:
            edge_attr = self.edge_lin(edge_attr)
        return self.dropout(self.conv(h, edge_index, edge_attr))

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, width={self.width}, edge_dim={self.edge_dim}"
