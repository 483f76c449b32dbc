"""The pre-norm residual Transformer block shared by the graph- and node-level models."""

from __future__ import annotations

from torch import Tensor, nn

from pyg_mup.graph import GraphStructure
from pyg_mup.nn import FlexGraphConv

from .local_branch import LocalBranch

ATTENTION_KINDS = ("local", "global", "both")


class TransformerBlock(nn.Module):
    r"""``h ← h + Σ_a Drop(Branch_a(LN(h)))``, then ``h ← h + Drop(FFN(LN(h)))``.

    The branches read the same normalised input and are summed, as in GPS: ``attention`` picks
    the attention branches — ``'local'`` (a :class:`FlexGraphConv` along the edges),
    ``'global'`` (within each graph, with edge biases and hop-distance gates up to
    ``max_distance``) or ``'both'`` — and ``local_branch`` adds a message-passing branch
    (:class:`~pyg_mup.models.local_branch.LocalBranch`: ``'gine'`` or ``'gated'``), GPS's local
    MPNN. Dropout sits on the residual branches and inside the FFN; ``attention_dropout`` on the
    attention weights (message-passing and dense backends).

    Args:
        width: model width ``heads * head_channels``.
        heads: attention heads (must divide ``width``).
        attention: ``'local'``, ``'global'`` or ``'both'``.
        dropout: dropout on branch outputs and the FFN hidden layer.
        edge_dim: size of encoded edge features (``None``: no edge bias).
        max_distance: largest hop distance the global branch embeds (``None``: none).
        ffn_ratio: FFN hidden size over ``width``.
        local_branch: ``None``, ``'gine'`` or ``'gated'``.
        attention_dropout: dropout on attention weights.
        backend: attention backend (see :class:`~pyg_mup.nn.MuPFlexAttention`).

    Shapes: ``h`` ``[N, width]`` → ``[N, width]``; ``edge_attr`` ``[E, edge_dim]``.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        attention: str = "local",
        dropout: float = 0.0,
        edge_dim: int | None = None,
        max_distance: int | None = None,
        ffn_ratio: int = 2,
        local_branch: str | None = None,
        attention_dropout: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.attention = attention
        self.norm_attn = nn.LayerNorm(width)
        self.attn = nn.ModuleDict()
        for mode in ("local", "global"):
            if attention in (mode, "both"):
                self.attn[mode] = FlexGraphConv(
                    width,
                    width // heads,
                    heads=heads,
                    dropout=attention_dropout,
                    edge_dim=edge_dim,
                    mode=mode,
                    root_weight=False,
                    max_distance=max_distance if mode == "global" else None,
                    backend=backend,
                )
        self.local_branch = (
            LocalBranch(local_branch, width, edge_dim) if local_branch is not None else None
        )
        self.norm_ffn = nn.LayerNorm(width)
        self.ffn = nn.Sequential(
            nn.Linear(width, ffn_ratio * width),
            nn.GELU(),
            dropout_or_identity(dropout),
            nn.Linear(ffn_ratio * width, width),
        )
        self.dropout = dropout_or_identity(dropout)

    def forward(
        self, h: Tensor, structures: dict[str, GraphStructure], edge_attr: Tensor | None
    ) -> Tensor:
        """``structures[mode]``: the batch's structure for each attention branch (any one of them
        holds the edges the message-passing branch runs on)."""
        x = self.norm_attn(h)
        for mode, conv in self.attn.items():
            h = h + self.dropout(conv(x, edge_attr=edge_attr, structure=structures[mode]))
        if self.local_branch is not None:
            edge_index = next(iter(structures.values())).edge_index
            h = h + self.dropout(self.local_branch(x, edge_index, edge_attr))
        return h + self.dropout(self.ffn(self.norm_ffn(h)))


def dropout_or_identity(p: float) -> nn.Module:
    """``nn.Dropout(p)``, or ``nn.Identity()`` for ``p == 0``: a zero-rate dropout returns its
    input but still costs a dispatched ``aten::dropout`` per call (4 per block and step, host
    time on a host-bound GPU step). Neither has parameters or buffers: same ``state_dict``."""
    return nn.Dropout(p) if p > 0 else nn.Identity()
