"""FlexAttention score mods for graphs: one small factory per mod, each returning a closure.

Every mod has FlexAttention's signature ``mod(score, b, h, q, kv) -> score`` and only gathers from
the tensors it captured, so the same closure runs inside ``flex_attention`` (scalar indices,
eager or compiled) and on the message-passing path, where ``q``/``kv`` are ``[P, 1]`` pair indices
and ``h`` is ``[1, H]`` (broadcasting turns each gather into a ``[P, H]`` table read). Captured
tensors that require grad receive gradients through both paths.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
IndexFn = Callable[[Tensor, Tensor], Tensor]


def pair_bias(pair_of: IndexFn, table: Tensor) -> ScoreMod:
    """Add ``table[pair_of(q, kv), h]``: a per-head bias of each node pair.

    ``table``: ``[P + 1, H]``; row 0 serves pairs without an edge (global mode's no-edge bias).
    """

    def add_pair_bias(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return score + table[pair_of(q, kv), h]

    return add_pair_bias


def distance_bias(distance_of: IndexFn, table: Tensor) -> ScoreMod:
    """Add ``table[distance_of(q, kv), h]`` (Graphormer's spatial encoding), ``table`` [D, H]."""

    def add_distance_bias(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return score + table[distance_of(q, kv), h]

    return add_distance_bias


def sigmoid_gate(
    pair_of: IndexFn | None = None,
    pair_logits: Tensor | None = None,
    distance_of: IndexFn | None = None,
    distance_logits: Tensor | None = None,
) -> ScoreMod:
    """Multiply the score by ``sigmoid(pair_logits[pair] + distance_logits[distance])``.

    ``pair_logits``: ``[P + 1, H]`` (e.g. an edge-type embedding, row 0 = no edge);
    ``distance_logits``: ``[D, H]``. Either part may be left out.
    """
    if pair_logits is None and distance_logits is None:
        raise ValueError("sigmoid_gate needs pair_logits, distance_logits or both")

    def gate(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        logit = 0.0
        if pair_logits is not None:
            logit = logit + pair_logits[pair_of(q, kv), h]
        if distance_logits is not None:
            logit = logit + distance_logits[distance_of(q, kv), h]
        return score * torch.sigmoid(logit)

    return gate


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
