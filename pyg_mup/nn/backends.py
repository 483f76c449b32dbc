"""The three ways to evaluate one attention function, and the rule that picks one.

Every backend takes projections in slot order (``[S, H, d]``), a structure bound to it
(:meth:`GraphStructure.bind`) and the layer's mods, and returns ``[S_dst, H, d]``:

* ``'flex'``: FlexAttention over the structure's ``BlockMask`` (compiled on CUDA; eager and
  forward-only on the CPU, where torch has no FlexAttention backward).
* ``'dense'``: the blocked dense backend (:mod:`pyg_mup.nn.dense`): graphs packed into small
  blocks, one batched matmul per block, plain autograd ops — global attention on the CPU, and
  local attention whose packed blocks are dense enough.
* ``'message_passing'``: scores per attended pair, PyG's softmax, a scatter of the values (run by
  the layer's ``propagate``) — sparse local attention, attention weights, dropout anywhere.
"""

from __future__ import annotations

import warnings
from functools import cache

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import and_masks, flex_attention
from torch_geometric.utils import softmax

from pyg_mup.graph import GraphStructure
from pyg_mup.graph.blocks import DENSE_MIN_BLOCK_DENSITY, FLEX_MIN_BLOCK_DENSITY, block_mask
from pyg_mup.graph.signatures import MaskMod, ScoreMod
from pyg_mup.graph.tables import OwnPairRows

from .dense import dense_block_attention

BACKENDS = ("auto", "flex", "message_passing", "dense")
FLEX_MIN_HEAD_CHANNELS = 16
"""FlexAttention's CUDA kernels raise NotImplementedError below 16 channels per head (head_dim
8 on an H200); ``'auto'`` runs message passing there."""


@cache
def _compiled_flex_attention():
    """One compiled FlexAttention per process (compiling per call would recompile every time)."""
    return torch.compile(flex_attention)


def resolve_backend(
    backend: str, query: Tensor, structure: GraphStructure, need_weights: bool, dropout: bool
) -> str:
    """The backend ``'auto'`` stands for, given the inputs.

    Attention weights and attention dropout need message passing (or dense). On CUDA:
    FlexAttention where the structure has a block mask dense enough for the compute dtype
    (:data:`~pyg_mup.graph.blocks.FLEX_MIN_BLOCK_DENSITY`) and heads of at least
    :data:`FLEX_MIN_HEAD_CHANNELS`; on the CPU: the dense backend for structures whose pairs
    lie inside the blocks of a packed layout (``fits_dense_blocks``: every graph of a global
    structure fits one block) that are dense enough
    (:data:`~pyg_mup.graph.blocks.DENSE_MIN_BLOCK_DENSITY`; global blocks count as full);
    message passing otherwise.
    """
    if backend != "auto":
        return backend
    if need_weights:
        return "message_passing"
    if query.is_cuda:
        if dropout or structure.block_mask is None:
            return "message_passing"
        if query.size(-1) < FLEX_MIN_HEAD_CHANNELS:
            _warn_small_heads(query.size(-1))
            return "message_passing"
        threshold = FLEX_MIN_BLOCK_DENSITY.get(query.dtype, FLEX_MIN_BLOCK_DENSITY[torch.float32])
        return "flex" if structure.block_density >= threshold else "message_passing"
    if (
        getattr(structure, "fits_dense_blocks", False)
        and structure.block_density >= DENSE_MIN_BLOCK_DENSITY
    ):
        return "dense"
    return "message_passing"


@cache
def _warn_small_heads(channels: int) -> None:
    warnings.warn(
        f"{channels} channels per head is below FlexAttention's CUDA minimum of "
        f"{FLEX_MIN_HEAD_CHANNELS}: backend='auto' runs message passing (use fewer, wider heads "
        "for FlexAttention)",
        stacklevel=4,
    )


def confine_non_finite(value: Tensor) -> Tensor:
    """Zero non-finite value entries. A blocked kernel multiplies the masked probabilities (0)
    of every key in a block by its value row, so one NaN would reach every query of the block,
    other graphs included; queries that do attend a non-finite node still get NaN through its
    key, as with message passing."""
    return torch.where(value.isfinite(), value, 0.0)


def flex(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    structure: GraphStructure,
    score_mod: ScoreMod | None,
    mask_mod: MaskMod | None,
    scale: float,
) -> Tensor:
    """FlexAttention over the structure's block mask: ``[S_dst, H, d]``."""
    if structure.block_mask is None:
        raise ValueError(
            "backend='flex' needs a structure with a block mask: build it with "
            "GraphStructure.build(..., flex=True) (or target='cuda')"
        )
    if query.is_cuda and query.size(-1) < FLEX_MIN_HEAD_CHANNELS:
        raise ValueError(
            f"backend='flex' needs at least {FLEX_MIN_HEAD_CHANNELS} channels per head on CUDA, "
            f"got {query.size(-1)}: use backend='auto' or 'message_passing', or wider heads"
        )
    if not query.is_cuda and torch.is_grad_enabled() and query.requires_grad:
        raise ValueError(
            "backend='flex' on CPU runs forward only (torch has no FlexAttention backward on "
            "CPU): use backend='auto', 'dense' or 'message_passing', or call under torch.no_grad()"
        )
    if structure.seq_dst == 0 or structure.seq_src == 0:
        return query.new_zeros(query.shape)
    mask = structure.block_mask
    if mask_mod is not None:
        mask = block_mask(
            structure.blocks,
            structure.seq_dst,
            structure.seq_src,
            structure.block_size,
            and_masks(structure.mask_mod(), mask_mod),
            keep_full_blocks=False,
        )
    attention = _compiled_flex_attention() if query.is_cuda else flex_attention
    out = attention(
        query.transpose(0, 1).unsqueeze(0),
        key.transpose(0, 1).unsqueeze(0),
        confine_non_finite(value).transpose(0, 1).unsqueeze(0),
        score_mod=score_mod,
        block_mask=mask,
        scale=scale,
    )
    return out.squeeze(0).transpose(0, 1)


def dense(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    structure: GraphStructure,
    score_mod: ScoreMod | None,
    mask_mod: MaskMod | None,
    scale: float,
    dropout: float,
    training: bool,
) -> Tensor:
    """The blocked dense backend: ``[S_dst, H, d]``, for structures whose pairs lie inside
    the blocks of a packed layout."""
    if not getattr(structure, "fits_dense_blocks", False):
        raise ValueError(
            "backend='dense' needs a structure whose graphs each fit one block: build it with "
            "layout='pack' (every graph, or in local mode every edge-connected node range, at "
            "most block_size nodes)"
        )
    padded = -(-structure.seq_dst // structure.block_size) * structure.block_size
    extra = padded - query.size(0)
    if extra:
        # the layer's mods may read per-slot data of seq_dst rows (``to_slots``): padding slots
        # read the last row instead, and the structure's mask, on the true slots, drops them
        score_mod, mask_mod = _within_slots(score_mod, mask_mod, structure.seq_dst - 1)
    mask = structure.mask_mod() if mask_mod is None else and_masks(structure.mask_mod(), mask_mod)

    def pad(t: Tensor) -> Tensor:
        return torch.cat([t, t.new_zeros(extra, *t.shape[1:])]) if extra else t

    out = dense_block_attention(
        pad(query),
        pad(key),
        pad(value),
        block_size=structure.block_size,
        scale=scale,
        score_mod=score_mod,
        mask_mod=mask,
        dropout=dropout,
        training=training,
    )
    return out[: query.size(0)]


def _within_slots(
    score_mod: ScoreMod | None, mask_mod: MaskMod | None, last: int
) -> tuple[ScoreMod | None, MaskMod | None]:
    """``score_mod`` and ``mask_mod`` called with slot indices capped at ``last``."""
    clamped_score = clamped_mask = None
    if score_mod is not None:

        def clamped_score(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            return score_mod(score, b, h, q.clamp(max=last), kv.clamp(max=last))

    if mask_mod is not None:

        def clamped_mask(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            return mask_mod(b, h, q.clamp(max=last), kv.clamp(max=last))

    return clamped_score, clamped_mask


def message_passing_weights(
    query: Tensor,
    key: Tensor,
    structure: GraphStructure,
    score_mod: ScoreMod | None,
    mask_mod: MaskMod | None,
    scale: float,
) -> Tensor:
    """``[P_att, H]`` attention weights over the structure's attended pairs.

    Scores per (src j, dst i) pair pass through the very mods the other backends use (with
    ``[P_att, 1]`` slot indices and ``[1, H]`` heads) and are normalised per destination with
    :func:`torch_geometric.utils.softmax`.
    """
    src, dst = structure.attention_pairs
    # index_select, not indexing: its backward is a scatter-add, indexing's an index_put
    # accumulate (slower on the CPU)
    score = (query.index_select(0, dst) * key.index_select(0, src)).sum(dim=-1) * scale
    q_index, kv_index = structure.message_passing_indices
    row_of = structure.pair_row
    if isinstance(row_of, OwnPairRows):  # its head index: what lets the mods read tables whole
        head = row_of.heads(query.size(1))
    else:
        head = torch.arange(query.size(1), device=query.device).unsqueeze(0)
    batch_index = q_index.new_zeros(1, 1)  # broadcasts as [P_att, 1] would, without its memory
    if score_mod is not None:
        score = score_mod(score, batch_index, head, q_index, kv_index)
    keep = None
    if mask_mod is not None:
        keep = mask_mod(batch_index, head, q_index, kv_index).expand_as(score)
        score = score.masked_fill(~keep, torch.finfo(score.dtype).min)
    alpha = softmax(score, dst, num_nodes=structure.seq_dst)
    return alpha if keep is None else alpha * keep
