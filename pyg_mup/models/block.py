"""The pre-norm residual Transformer block shared by the graph- and node-level models."""

from __future__ import annotations

from torch import Tensor, nn

from pyg_mup.nn import FlexGraphConv
from pyg_mup.structure import GraphStructure

ATTENTION_KINDS = ("local", "global", "both")


class TransformerBlock(nn.Module):
    r"""``h ← h + Σ_a Drop(Attn_a(LN(h)))``, then ``h ← h + Drop(FFN(LN(h)))``.

    ``attention`` picks the attention branches: ``'local'`` (a :class:`FlexGraphConv` along the
    edges), ``'global'`` (within each graph, with edge biases and hop-distance gates up to
    ``max_distance``), or ``'both'``, whose two branches read the same normalised input and are
    summed, as in GPS. Dropout sits on the residual branches and inside the FFN, not on the
    attention weights (the FlexAttention backend has none).

    Args:
        width: model width ``heads * head_channels``.
        heads: attention heads (must divide ``width``).
        attention: ``'local'``, ``'global'`` or ``'both'``.
        dropout: dropout on branch outputs and the FFN hidden layer.
        edge_dim: size of encoded edge features (``None``: no edge bias).
        max_distance: largest hop distance the global branch embeds (``None``: none).
        ffn_ratio: FFN hidden size over ``width``.

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
                    dropout=0.0,
                    edge_dim=edge_dim,
                    mode=mode,
                    root_weight=False,
                    max_distance=max_distance if mode == "global" else None,
                )
        self.norm_ffn = nn.LayerNorm(width)
        self.ffn = nn.Sequential(
            nn.Linear(width, ffn_ratio * width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_ratio * width, width),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        h: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor | None,
        batch: Tensor | None,
        structures: dict[str, GraphStructure],
    ) -> Tensor:
        """``structures[mode]`` is the batch's prebuilt structure for each attention branch."""
        x = self.norm_attn(h)
        for mode, conv in self.attn.items():
            out = conv(x, edge_index, edge_attr, batch=batch, structure=structures[mode])
            h = h + self.dropout(out)
        return h + self.dropout(self.ffn(self.norm_ffn(h)))
