"""FlexAttention score mods for graphs: one small factory per mod, each returning a closure.

Every mod has FlexAttention's signature ``mod(score, b, h, q, kv) -> score`` and only gathers from
the tensors it captured, so the same closure runs inside ``flex_attention`` (scalar indices,
eager or compiled) and on the message-passing path, where ``q``/``kv`` are ``[P, 1]`` pair indices
and ``h`` is ``[1, H]`` (broadcasting turns each gather into a ``[P, H]`` table read). Captured
tensors that require grad receive gradients through both paths. The backend's own call reads the
factories' tables with no gather (:meth:`~pyg_mup.graph.tables.OwnPairRows.read`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyg_mup.graph.signatures import IndexFn, MaskMod, ScoreMod
from pyg_mup.graph.tables import OwnPairRows

__all__ = ["IndexFn", "MaskMod", "ScoreMod", "compose", "pair_bias", "sigmoid_gate"]


def pair_bias(row_of: IndexFn, table: Tensor) -> ScoreMod:
    """Add ``table[row_of(q, kv), h]``: a per-head bias of each node pair; ``table``: ``[R, H]``."""

    def add_pair_bias(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return score + _read(row_of, table, h, q, kv)

    return add_pair_bias


def sigmoid_gate(row_of: IndexFn, logits: Tensor) -> ScoreMod:
    """Multiply the score by ``sigmoid(logits[row_of(q, kv), h])``; ``logits``: ``[R, H]``."""

    def gate(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return score * torch.sigmoid(_read(row_of, logits, h, q, kv))

    return gate


def _read(row_of: IndexFn, table: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
    """``table[row_of(q, kv), h]``; the message-passing backend's own call reads its rows in
    table order, as a slice (indexing's backward would be an ``index_put`` accumulate)."""
    if isinstance(row_of, OwnPairRows):
        return row_of.read(table, h, q, kv)
    return table[row_of(q, kv), h]


def compose(*mods: ScoreMod | None) -> ScoreMod | None:
    """Apply ``mods`` left to right, skipping ``None``; ``None`` when nothing is left."""
    active = [mod for mod in mods if mod is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]

    def composed(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        for mod in active:
            score = mod(score, b, h, q, kv)
        return score

    return composed
