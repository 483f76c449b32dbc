"""Blocked dense attention: the CPU backend for attention confined to blocks of slots.

On CPU, FlexAttention has no backward, and message passing over all Σ n_g² within-graph pairs
spends its time in gathers and in the ``index_put`` accumulations of their backward. When every
graph fits in one block of ``B`` slots (the ``'pack'`` layout, :mod:`pyg_mup.graph.layout`), the
same attention is one batched matrix product per block: scores ``[num_blocks, H, B, B]`` computed
with BLAS, the FlexAttention score and mask mods evaluated on broadcast index grids, a masked
softmax, and a second batched product with the values. Only plain autograd ops are used, so it has
a backward on every device, and no op reads data back to the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_mup.score_mods import MaskMod, ScoreMod


def dense_block_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    block_size: int,
    scale: float,
    score_mod: ScoreMod | None = None,
    mask_mod: MaskMod,
    dropout: float = 0.0,
    training: bool = False,
) -> Tensor:
    r"""Attention of each slot over the slots of its own block, as dense batched products.

    .. math::
        \mathbf{o}_q = \sum_{kv \in \mathrm{block}(q),\ \mathrm{mask}(q, kv)}
        \mathrm{softmax}_{kv}\big(\mathrm{score\_mod}(s \cdot \mathbf{q}_q^\top \mathbf{k}_{kv},
        b, h, q, kv)\big)\, \mathbf{v}_{kv}

    Shapes (``S`` slots, ``B = block_size``, ``nb = S / B`` blocks, ``H`` heads)::

        query, key  [S, H, d]      in slot order; the caller pads S to a multiple of B
        value       [S, H, d_v]
        scores      [nb, H, B, B]  memory: nb · H · B² entries (a few per score with autograd)
        output      [S, H, d_v]

    The mods are the FlexAttention closures, called once on broadcast index grids: ``b`` zeros
    ``[1, 1, 1, 1]`` (FlexAttention's batch index), ``h`` ``[1, H, 1, 1]``, ``q`` ``[nb, 1, B, 1]``
    and ``kv`` ``[nb, 1, 1, B]`` (int64 global slot numbers, not block-local), so a mod that
    gathers from captured tensors yields a table broadcastable to ``[nb, H, B, B]``.

    Pairs across blocks are never scored: the caller guarantees that ``mask_mod`` allows none
    (every graph lies inside one block), which is not checked because checking it reads data.
    Rows with no allowed key come out as zeros, like FlexAttention and PyG's softmax over an empty
    set. ``dropout`` drops attention probabilities when ``training``, as the message-passing
    backend does. Half-precision inputs are computed in float32 and the output cast back.

    Non-finite values stay inside their graph: non-finite ``value`` entries are read as zero
    (a masked probability 0 times NaN would otherwise be NaN in the product and reach every query
    of the block). A query that attends a node whose ``key`` (or its own ``query``) is non-finite
    still gets NaN, through its scores; one that attends a node whose key is finite but whose value
    is not sees that value as zero. This confinement holds for the forward pass only: gradients of
    a NaN output row reach the whole block through the products.

    Args:
        query, key, value: per-slot projections, see the shapes above.
        block_size: ``B``; ``S`` must be a multiple of it.
        scale: factor of the dot products (``1/d`` under μP, ``1/sqrt(d)`` in standard attention).
        score_mod: ``(score, b, h, q, kv) -> score`` or ``None``.
        mask_mod: ``(b, h, q, kv) -> bool``, e.g. the structure's same-graph mask.
        dropout: probability of dropping an attention weight while ``training``.
        training: whether dropout is active.
    """
    if query.dim() != 3:
        raise ValueError(f"query must be [S, H, d], got shape {tuple(query.shape)}")
    if key.shape != query.shape:
        raise ValueError(
            f"key must have query's shape {tuple(query.shape)}, got {tuple(key.shape)}"
        )
    if value.dim() != 3 or value.shape[:2] != query.shape[:2]:
        raise ValueError(
            f"value must be [S, H, d_v] with (S, H) = {tuple(query.shape[:2])}, "
            f"got {tuple(value.shape)}"
        )
    if block_size <= 0 or query.size(0) % block_size:
        raise ValueError(
            f"block_size must be positive and divide the {query.size(0)} slots, got {block_size}"
        )
    slots, heads, _ = query.shape
    blocks, device = slots // block_size, query.device
    compute = torch.promote_types(query.dtype, torch.float32)

    def blocked(x: Tensor) -> Tensor:  # [S, H, c] -> [nb, H, B, c]
        return x.to(compute).reshape(blocks, block_size, heads, x.size(-1)).transpose(1, 2)

    value = torch.where(value.isfinite(), value, 0)
    # the scale on the queries: [S, H, d] is smaller than the [nb, H, B, B] scores once B > d
    scores = (blocked(query) * scale) @ blocked(key).transpose(-1, -2)  # [nb, H, B, B]

    slot = torch.arange(slots, device=device).view(blocks, 1, block_size)
    q_index, kv_index = slot.unsqueeze(-1), slot.unsqueeze(-2)  # [nb, 1, B, 1], [nb, 1, 1, B]
    head = torch.arange(heads, device=device).view(1, heads, 1, 1)
    batch = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=device)
    if score_mod is not None:
        scores = score_mod(scores, batch, head, q_index, kv_index)
    keep = mask_mod(batch, head, q_index, kv_index)
    scores = torch.where(keep, scores, float("-inf"))
    # rows with no allowed key are all -inf, so NaN after the softmax: the mask makes them zero
    # (and the first where keeps NaN out of the gradient of the scores)
    weights = torch.where(keep, torch.softmax(scores, dim=-1), 0)
    weights = F.dropout(weights, p=dropout, training=training)
    out = weights @ blocked(value)  # [nb, H, B, d_v]
    return out.transpose(1, 2).reshape(slots, heads, value.size(-1)).to(query.dtype)
