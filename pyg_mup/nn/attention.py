"""``MuPFlexAttention``: the base of every attention layer in pyg_mup.

It owns what all graph attentions share — the query/key/value projections, the root weight, the
attention scale (the μP hook) and the call into FlexAttention — and asks its subclasses only for
idiomatic FlexAttention ``score_mod``/``mask_mod`` closures. The same closures also drive a
message-passing twin (PyG ``propagate`` + ``torch_geometric.utils.softmax`` over the structure's
explicit attention pairs), so every subclass gets two backends computing one function: FlexAttention
where it is fast (CUDA) and message passing where FlexAttention has no backward (CPU).
"""

from __future__ import annotations

import inspect
import math
from functools import cache

import torch.nn.functional as F
from torch import Tensor
from torch.nn.parameter import UninitializedParameter
from torch_geometric.nn import Linear, MessagePassing

from pyg_mup.graph import GraphStructure
from pyg_mup.graph.checks import check_dtype, check_node_features, check_positive_int
from pyg_mup.graph.signatures import MaskMod, ScoreMod

from . import backends
from .backends import BACKENDS


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
    graph attention; every backend and μP come from this class. A keyword given to
    :meth:`forward` reaches the hook(s) whose signature names it (or takes ``**inputs``).

    Non-finite inputs: a NaN or inf in one node's features reaches the queries that attend to
    it, on every backend, and no other node — in particular no node of another graph of the
    batch (the blocked backends zero non-finite value entries, see
    :func:`~pyg_mup.nn.backends.confine_non_finite`).

    Args:
        in_channels: input size, or ``(src, dst)`` sizes for bipartite graphs.
        out_channels: channels per head ``d``.
        heads: number of heads ``H``.
        concat: concatenate heads (output ``H * d``) or average them (output ``d``).
        dropout: dropout on attention weights (message-passing and dense backends; the flex
            backend raises in training if it is non-zero, and ``'auto'`` avoids it then).
        bias: learn biases in the projections.
        root_weight: add the skip projection of the target node's own features.
        backend: ``'flex'``, ``'message_passing'``, ``'dense'`` or ``'auto'``
            (:func:`pyg_mup.nn.backends.resolve_backend`): on CUDA, FlexAttention unless the
            structure's blocks are mostly empty (sparse local attention, where a gather per edge
            is faster than 128×128 tiles); on the CPU, the blocked dense backend for global
            structures whose graphs fit one block, message passing otherwise.
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
        check_positive_int(out_channels, "out_channels")
        check_positive_int(heads, "heads")
        for channels in in_channels if isinstance(in_channels, tuple) else (in_channels,):
            if isinstance(channels, bool) or not isinstance(channels, int) or channels < -1:
                raise ValueError(
                    f"in_channels must be an int (-1: lazy) or a pair of them, got {in_channels!r}"
                )
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
        self._hook_names = _hook_parameters(type(self))  # read once: signatures do not change

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
        """Attend over ``structure``; ``inputs`` go to the mod hooks that declare them.

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
        if not isinstance(structure, GraphStructure):
            raise TypeError(
                f"structure must be a GraphStructure, got {type(structure).__name__} (build one "
                "with GraphStructure.build(edge_index, num_nodes, ...); FlexGraphConv takes "
                "edge_index directly)"
            )
        x_src, x_dst = self._split_features(x)
        if (x_src.size(0), x_dst.size(0)) != (structure.num_src, structure.num_dst):
            raise ValueError(
                f"x has ({x_src.size(0)}, {x_dst.size(0)}) (src, dst) nodes but the structure "
                f"was built for ({structure.num_src}, {structure.num_dst})"
            )
        heads, channels = self.heads, self.out_channels
        query = structure.to_slots(self.lin_query(x_dst).view(-1, heads, channels))  # [S, H, d]
        key = structure.to_slots(self.lin_key(x_src).view(-1, heads, channels))
        value = structure.to_slots(self.lin_value(x_src).view(-1, heads, channels))
        backend = backends.resolve_backend(
            self.backend, query, structure, need_weights, self.training and self.dropout > 0
        )
        if need_weights and backend != "message_passing":
            raise ValueError(
                f"return_attention_weights=True runs message passing, but backend={backend!r} "
                "was asked for: use backend='auto' or 'message_passing'"
            )
        bound = structure.bind(backend)
        score_inputs, mask_inputs = _route(type(self).__name__, self._hook_names, inputs)
        score_mod = self.score_mod(bound, **score_inputs)
        mask_mod = self.mask_mod(bound, **mask_inputs)

        alpha = None
        if backend == "message_passing":
            alpha = backends.message_passing_weights(
                query, key, bound, score_mod, mask_mod, self.scale
            )
            # a zero rate returns alpha itself: skip the call (an op per layer and step)
            dropped = (
                F.dropout(alpha, p=self.dropout, training=self.training) if self.dropout else alpha
            )
            out = self.propagate(
                bound.attention_pairs,
                value=value,
                alpha=dropped,
                size=(bound.seq_src, bound.seq_dst),
            )
        elif backend == "dense":
            out = backends.dense(
                query,
                key,
                value,
                bound,
                score_mod,
                mask_mod,
                self.scale,
                self.dropout,
                self.training,
            )
        else:
            if self.training and self.dropout > 0:
                raise ValueError(
                    "attention dropout is not supported by the flex backend: use dropout=0.0 "
                    "(and dropout outside the attention), backend='auto' or 'message_passing'"
                )
            out = backends.flex(query, key, value, bound, score_mod, mask_mod, self.scale)

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
            if isinstance(self.in_channels, tuple) and src_channels != dst_channels:
                raise TypeError(
                    f"this layer is bipartite (in_channels={self.in_channels}): pass x as a pair "
                    "(x_src, x_dst)"
                )
            check_node_features(x, "x", src_channels)
            self._check_dtype(x, "x")
            return x, x
        if not isinstance(x, tuple | list) or len(x) != 2:
            raise TypeError("x must be a tensor [N, F] or a pair (x_src, x_dst)")
        check_node_features(x[0], "x[0] (source nodes)", src_channels)
        check_node_features(x[1], "x[1] (target nodes)", dst_channels)
        self._check_dtype(x[0], "x[0] (source nodes)")
        self._check_dtype(x[1], "x[1] (target nodes)")
        return x[0], x[1]

    def _check_dtype(self, value: Tensor, name: str) -> None:
        weight = self.lin_query.weight
        if not isinstance(weight, UninitializedParameter):
            check_dtype(value, name, weight.dtype)

    def message(self, value_j: Tensor, alpha: Tensor) -> Tensor:
        return value_j * alpha.unsqueeze(-1)

    def __prepare_scriptable__(self):
        """``torch.jit.script`` calls this on every module it scripts: say why it cannot work
        instead of failing deep in PyG's TorchScript templates."""
        raise TypeError(
            f"{type(self).__name__} does not support TorchScript (deprecated in torch, and "
            "FlexAttention cannot be scripted): use torch.compile, or torch.export with a "
            "prebuilt structure (see the FlexGraphConv docstring)"
        )

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"heads={self.heads})"
        )


@cache
def _hook_parameters(cls: type) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """The keywords each hook of ``cls`` declares (``None``: it takes ``**inputs``). A hook the
    class does not override declares none: the base's ``**inputs`` would swallow a misspelt
    keyword meant for the other one."""

    def names(name: str) -> frozenset[str] | None:
        hook = getattr(cls, name)
        if hook is getattr(MuPFlexAttention, name):
            return frozenset()
        parameters = list(inspect.signature(hook).parameters.values())[2:]  # self, structure
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return None
        return frozenset(p.name for p in parameters)

    return names("score_mod"), names("mask_mod")


def _route(
    name: str, hook_names: tuple[frozenset[str] | None, frozenset[str] | None], inputs: dict
) -> tuple[dict, dict]:
    """Split ``forward``'s keywords between ``score_mod`` and ``mask_mod`` by their signatures
    (``hook_names``, from :func:`_hook_parameters`); a keyword neither declares raises
    ``TypeError`` naming it."""
    score_names, mask_names = hook_names

    def pick(allowed: frozenset[str] | None) -> dict:
        return (
            dict(inputs) if allowed is None else {k: v for k, v in inputs.items() if k in allowed}
        )

    unknown = [
        name
        for name in inputs
        if score_names is not None
        and mask_names is not None
        and name not in score_names
        and name not in mask_names
    ]
    if unknown:
        raise TypeError(
            f"{name}.forward got unexpected keyword(s) {', '.join(map(repr, unknown))}: "
            "neither its score_mod nor its mask_mod declares them"
        )
    return pick(score_names), pick(mask_names)
