"""``MuPFlexAttention``: the base of every attention layer in pyg_mup.

It owns what all graph attentions share — the query/key/value projections, the root weight, the
attention scale (the μP hook) and the call into FlexAttention — and asks its subclasses only for
idiomatic FlexAttention ``score_mod``/``mask_mod`` closures. The same closures also drive a
message-passing twin (PyG ``propagate`` + ``torch_geometric.utils.softmax`` over the structure's
explicit attention pairs), so every subclass gets two backends computing one function: FlexAttention
where it is fast (CUDA) and message passing where FlexAttention has no backward (CPU).
"""

from __future__ import annotations

import math
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import and_masks, flex_attention
from torch_geometric.nn import Linear, MessagePassing
from torch_geometric.utils import softmax

from pyg_mup.checks import check_node_features
from pyg_mup.score_mods import MaskMod, ScoreMod
from pyg_mup.structure import GraphStructure

BACKENDS = ("auto", "flex", "message_passing")
FLEX_MIN_BLOCK_DENSITY = {torch.bfloat16: 1 / 64, torch.float16: 1 / 64, torch.float32: 1 / 16}
"""``backend='auto'`` on CUDA uses FlexAttention when at least this share of the scores it
computes are attention pairs (:attr:`GraphStructure.block_density`), message passing below; per
compute dtype (others: float32's). Measured on an H200 (benchmarks/README.md, "Where FlexAttention
starts to pay"): FlexAttention's time hardly grows with the share of its tiles that hold edges,
message passing's grows with the edges, and they cross between 1/128 and 1/64 in bf16 and near
1/16 in float32."""


@cache
def _compiled_flex_attention():
    """One compiled FlexAttention per process (compiling per call would recompile every time)."""
    return torch.compile(flex_attention)


class MuPFlexAttention(MessagePassing):
    r"""Multi-head attention over the node pairs of a :class:`~pyg_mup.GraphStructure`.

    .. math::
        \mathbf{x}'_i = \mathbf{W}_{\mathrm{skip}} \mathbf{x}_i + \Big\Vert_{h=1}^{H}
        \sum_{j} \alpha^{h}_{ij} \mathbf{W}^{h}_{V} \mathbf{x}_j, \qquad
        \alpha^{h}_{ij} = \operatorname{softmax}_j\big(
        \mathrm{score\_mod}(s \cdot \langle \mathbf{W}^h_Q \mathbf{x}_i, \mathbf{W}^h_K \mathbf{x}_j
        \rangle, h, i, j)\big)

    over the pairs the structure allows (and the subclass's ``mask_mod`` keeps), where the scale
    :math:`s` is :attr:`scale`: ``attn_mult / sqrt(d)`` in standard parametrization and
    ``attn_mult * sqrt(d_base) / d`` once μP base shapes are set (``base_head_channels``).

    Subclass it and override :meth:`score_mod` (and optionally :meth:`mask_mod`) to write a new
    graph attention; both backends and μP come from this class.

    Args:
        in_channels: input size, or ``(src, dst)`` sizes for bipartite graphs.
        out_channels: channels per head ``d``.
        heads: number of heads ``H``.
        concat: concatenate heads (output ``H * d``) or average them (output ``d``).
        dropout: dropout on attention weights (message-passing backend only; the flex backend
            raises in training if it is non-zero).
        bias: learn biases in the projections.
        root_weight: add the skip projection of the target node's own features.
        backend: ``'flex'``, ``'message_passing'``, or ``'auto'``: message passing on CPU
            (FlexAttention has no backward there); on CUDA, flex unless the structure's blocks
            are mostly empty (:data:`FLEX_MIN_BLOCK_DENSITY`, per dtype: sparse local attention,
            where a gather per edge is faster than FlexAttention's 128×128 tiles).
        attn_mult: constant multiplier of the attention logits (a μP hyperparameter).

    Shapes:
        input: ``x`` ``[N, F]`` or ``([N_src, F_src], [N_dst, F_dst])``;
        output: ``[N_dst, H * d]`` if ``concat`` else ``[N_dst, d]``.
    """

    def __init__(
        self,
        in_channels: int | tuple[int, int],
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        dropout: float = 0.0,
        bias: bool = True,
        root_weight: bool = True,
        backend: str = "auto",
        attn_mult: float = 1.0,
        **kwargs,
    ):
        kwargs.setdefault("aggr", "add")
        super().__init__(node_dim=0, **kwargs)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        for name, value in (("out_channels", out_channels), ("heads", heads)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.concat = concat
        self.dropout = dropout
        self.root_weight = root_weight
        self.backend = backend
        self.attn_mult = float(attn_mult)
        self.base_head_channels: int | None = None

        src_channels, dst_channels = (
            in_channels if isinstance(in_channels, tuple) else (in_channels, in_channels)
        )
        width = heads * out_channels
        self.lin_key = Linear(src_channels, width, bias=bias)
        self.lin_query = Linear(dst_channels, width, bias=bias)
        self.lin_value = Linear(src_channels, width, bias=bias)
        if root_weight:
            self.lin_skip = Linear(dst_channels, width if concat else out_channels, bias=bias)
        else:
            self.register_parameter("lin_skip", None)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.lin_key.reset_parameters()
        self.lin_query.reset_parameters()
        self.lin_value.reset_parameters()
        if self.lin_skip is not None:
            self.lin_skip.reset_parameters()

    # ------------------------------------------------------------------------- μP hook
    @property
    def head_channels(self) -> int:
        """``d``, the channels per head (what μP's attention scale depends on)."""
        return self.out_channels

    @property
    def scale(self) -> float:
        """Attention logit scale: ``attn_mult / sqrt(d)`` (SP) or ``attn_mult * sqrt(d_base) / d``
        (μP, set through ``base_head_channels``; equal to SP at base width)."""
        d = self.head_channels
        if self.base_head_channels is None:
            return self.attn_mult / math.sqrt(d)
        return self.attn_mult * math.sqrt(self.base_head_channels) / d

    # --------------------------------------------------------------- subclass extension points
    def score_mod(self, structure: GraphStructure, **inputs) -> ScoreMod | None:
        """Return a FlexAttention ``score_mod`` for this batch, or ``None`` for plain attention.

        ``inputs`` are the extra keyword arguments given to :meth:`forward`.
        """
        return None

    def mask_mod(self, structure: GraphStructure, **inputs) -> MaskMod | None:
        """Return an extra ``mask_mod`` ANDed with the structure's own mask, or ``None``."""
        return None

    # ---------------------------------------------------------------------------- forward
    def forward(
        self,
        x: Tensor | tuple[Tensor, Tensor],
        structure: GraphStructure,
        return_attention_weights: bool | None = None,
        **inputs,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """Attend over ``structure``; ``inputs`` are passed to the mod hooks.

        With ``return_attention_weights=True`` also returns ``(pairs [2, P], alpha [P, H])`` over
        ``structure.attention_pairs``, as node indices (computed on the message-passing path).
        """
        out, alpha = self.attend(x, structure, bool(return_attention_weights), **inputs)
        if return_attention_weights:
            return out, (structure.attention_pairs_of_nodes(), alpha)
        return out

    def attend(
        self,
        x: Tensor | tuple[Tensor, Tensor],
        structure: GraphStructure,
        need_weights: bool = False,
        **inputs,
    ) -> tuple[Tensor, Tensor | None]:
        """Project, attend with the chosen backend, merge heads and add the root weight.

        Returns ``(out, alpha)`` where ``alpha`` is ``[P_att, H]`` if ``need_weights`` else None.
        """
        x_src, x_dst = self._split_features(x)
        if (x_src.size(0), x_dst.size(0)) != (structure.num_src, structure.num_dst):
            raise ValueError(
                f"x has ({x_src.size(0)}, {x_dst.size(0)}) (src, dst) nodes but the structure "
                f"was built for ({structure.num_src}, {structure.num_dst})"
            )
        heads, channels = self.heads, self.out_channels
        query = structure.to_slots(self.lin_query(x_dst).view(-1, heads, channels))
        key = structure.to_slots(self.lin_key(x_src).view(-1, heads, channels))
        value = structure.to_slots(self.lin_value(x_src).view(-1, heads, channels))
        use_flex = not need_weights and self._resolve_backend(query, structure) == "flex"
        if use_flex:  # the block mask before the mods: in local mode it builds the pair look-up,
            structure.block_mask  # noqa: B018  so the mods capture its tensors, not lazy code
        score_mod = self.score_mod(structure, **inputs)
        mask_mod = self.mask_mod(structure, **inputs)

        alpha = None
        if not use_flex:
            out, alpha = self._message_passing(query, key, value, structure, score_mod, mask_mod)
        else:
            if self.training and self.dropout > 0:
                raise ValueError(
                    "attention dropout is not supported by the flex backend: use dropout=0.0 "
                    "(and dropout outside the attention) or backend='message_passing'"
                )
            out = self._flex(query, key, value, structure, score_mod, mask_mod)

        out = structure.from_slots(out)
        out = out.reshape(-1, heads * channels) if self.concat else out.mean(dim=1)
        if self.lin_skip is not None:
            out = out + self.lin_skip(x_dst)
        return out, alpha

    def _split_features(self, x: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        src_channels, dst_channels = (
            self.in_channels
            if isinstance(self.in_channels, tuple)
            else (self.in_channels, self.in_channels)
        )
        if isinstance(x, Tensor):
            check_node_features(x, "x", src_channels)
            return x, x
        if not isinstance(x, tuple | list) or len(x) != 2:
            raise TypeError("x must be a tensor [N, F] or a pair (x_src, x_dst)")
        check_node_features(x[0], "x[0] (source nodes)", src_channels)
        check_node_features(x[1], "x[1] (target nodes)", dst_channels)
        return x[0], x[1]

    def _resolve_backend(self, query: Tensor, structure: GraphStructure) -> str:
        if self.backend != "auto":
            return self.backend
        threshold = FLEX_MIN_BLOCK_DENSITY.get(query.dtype, FLEX_MIN_BLOCK_DENSITY[torch.float32])
        if query.is_cuda and structure.block_density >= threshold:
            return "flex"
        return "message_passing"

    def _flex(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        structure: GraphStructure,
        score_mod: ScoreMod | None,
        mask_mod: MaskMod | None,
    ) -> Tensor:
        """FlexAttention over the structure's block mask: ``[N_dst, H, d]``."""
        if structure.seq_dst == 0 or structure.seq_src == 0:
            return query.new_zeros(query.shape)
        if not query.is_cuda and torch.is_grad_enabled() and query.requires_grad:
            raise ValueError(
                "backend='flex' on CPU runs forward only (torch has no FlexAttention backward on "
                "CPU): use backend='auto' or 'message_passing', or call under torch.no_grad()"
            )
        block_mask = structure.block_mask
        if mask_mod is not None:
            block_mask = structure.block_mask_with(and_masks(structure.mask_mod(), mask_mod))
        attention = _compiled_flex_attention() if query.is_cuda else flex_attention
        out = attention(
            query.transpose(0, 1).unsqueeze(0),
            key.transpose(0, 1).unsqueeze(0),
            value.transpose(0, 1).unsqueeze(0),
            score_mod=score_mod,
            block_mask=block_mask,
            scale=self.scale,
        )
        return out.squeeze(0).transpose(0, 1)

    def _message_passing(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        structure: GraphStructure,
        score_mod: ScoreMod | None,
        mask_mod: MaskMod | None,
    ) -> tuple[Tensor, Tensor]:
        """The same attention as PyG message passing over explicit pairs.

        Scores ``[P, H]`` are computed per (src j, dst i) pair, passed through the very mods the
        flex backend uses (with ``[P, 1]`` indices), normalised per destination with
        :func:`torch_geometric.utils.softmax`, and aggregated by :meth:`propagate`.
        """
        pairs = structure.attention_pairs
        src, dst = pairs
        score = (query[dst] * key[src]).sum(dim=-1) * self.scale
        q_index, kv_index = structure.message_passing_indices
        head = torch.arange(self.heads, device=query.device).unsqueeze(0)
        batch_index = torch.zeros_like(q_index)
        if score_mod is not None:
            score = score_mod(score, batch_index, head, q_index, kv_index)
        keep = None
        if mask_mod is not None:
            keep = mask_mod(batch_index, head, q_index, kv_index).expand_as(score)
            score = score.masked_fill(~keep, torch.finfo(score.dtype).min)
        alpha = softmax(score, dst, num_nodes=structure.seq_dst)
        if keep is not None:
            alpha = alpha * keep
        weights = alpha
        alpha = F.dropout(alpha, p=self.dropout, training=self.training)
        out = self.propagate(
            pairs, value=value, alpha=alpha, size=(structure.seq_src, structure.seq_dst)
        )
        return out, weights

    def message(self, value_j: Tensor, alpha: Tensor) -> Tensor:
        return value_j * alpha.unsqueeze(-1)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"heads={self.heads})"
        )
