"""Answer "is ``kv → q`` an edge, and which unique pair is it?" inside FlexAttention mods.

A mod sees one (q, kv) index at a time (or broadcast index tensors on the message-passing path),
so the answer must be a few gathers into tensors of size O(E), never an N×N table (which also
overflows int32 indexing past ~46k nodes). Two layouts, both returning ``pair id + 1`` and 0 for
"no edge":

* :class:`TileLookup` — two gathers: a block-grid table ``tile_of_block[q // B, kv // B]`` and
  ``tiles[tile, q % B, kv % B]`` for the blocks that hold edges. Fastest, and small when edges
  cluster into few blocks (molecular batches, graphs in locality order); its memory is
  ``num_tiles × B²``, which explodes for randomly ordered large graphs.
* :class:`HashLookup` — a cuckoo hash of the pair keys ``q * num_src + kv`` with three hash
  functions: six gathers, memory O(P) whatever the node order.
* :class:`BlockDiagonalLookup` — for a packed layout whose pairs all lie inside diagonal
  blocks, what the dense backend asks: one gather per look-up, memory ``S × B``.

:func:`lookup_kind` picks tiles when they cost at most ``TILE_BUDGET_PER_PAIR`` entries per
pair, else the hash.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

PairLookupFn = Callable[[Tensor, Tensor], Tensor]
TILE_BUDGET_PER_PAIR = 256
LOOKUPS = ("auto", "tiles", "hash")


class TileLookup:
    """Per-block tiles of pair ids.

    ``tile_of_block``: ``[QB, KB]`` int32, 0 where the block holds no pair. ``tiles``:
    ``[T + 1, B, B]`` int32 holding ``pair id + 1``; tile 0 is all zeros so every (q, kv), even a
    masked or padded one, can be looked up without a branch.
    """

    kind = "tiles"

    def __init__(
        self, dst: Tensor, src: Tensor, tile_of_pair: Tensor, tile_of_block: Tensor, size: int
    ):
        num_tiles = int(tile_of_block.max()) if tile_of_block.numel() else 0
        self.block_size = size
        self.tile_of_block = tile_of_block.to(torch.int32)
        self.tiles = torch.zeros(num_tiles + 1, size, size, dtype=torch.int32, device=dst.device)
        pair_id = torch.arange(1, dst.numel() + 1, dtype=torch.int32, device=dst.device)
        self.tiles[tile_of_pair, dst % size, src % size] = pair_id

    def fn(self) -> PairLookupFn:
        tile_of_block, tiles, size = self.tile_of_block, self.tiles, self.block_size

        def lookup(q: Tensor, kv: Tensor) -> Tensor:
            return tiles[tile_of_block[q // size, kv // size], q % size, kv % size]

        return lookup

    def apply(self, fn: Callable[[Tensor], Tensor]) -> TileLookup:
        moved = object.__new__(TileLookup)
        moved.block_size = self.block_size
        moved.tile_of_block, moved.tiles = fn(self.tile_of_block), fn(self.tiles)
        return moved


class HashLookup:
    """Cuckoo hash of pair keys ``dst * num_src + src``.

    ``slots``: ``[2^bits]`` int64 holding ``pair id + 1`` (0 = empty; int64 because Inductor
    indexes only with int64 and a slot indexes ``keys``); ``keys``: ``[P + 1]`` int64
    pair keys with a -1 sentinel at 0. Each key sits in one of its three candidate slots
    ``h_c(key)``, so a look-up reads the three slots and checks which one holds this key.
    """

    kind = "hash"
    _MULTIPLIERS = (0x4F1BBCDCBFA53E0B, 0x61595A1E93EA75A7, 0x165667B19E3779F9)  # odd, < 2**63
    _MAX_ROUNDS = 200

    def __init__(self, pair_key: Tensor, num_src: int):
        self.num_src = num_src
        self.keys = torch.cat([pair_key.new_full((1,), -1), pair_key])
        bits = max(4, int(2 * max(pair_key.numel(), 1) - 1).bit_length())
        while True:
            slots = self._place(pair_key, bits)
            if slots is not None:
                break
            bits += 1
        self.bits = bits
        self.slots = slots

    def _place(self, pair_key: Tensor, bits: int) -> Tensor | None:
        """Parallel cuckoo insertion: every homeless key claims its current candidate slot; the
        winner of each slot stays, the loser and any evicted occupant move to their next hash."""
        device = pair_key.device
        slots = torch.zeros(1 << bits, dtype=torch.long, device=device)
        homeless = torch.arange(1, pair_key.numel() + 1, device=device)
        choice = torch.zeros(pair_key.numel() + 1, dtype=torch.long, device=device)
        for _ in range(self._MAX_ROUNDS):
            if homeless.numel() == 0:
                return slots
            multipliers = torch.tensor(self._MULTIPLIERS, device=device)[choice[homeless]]
            target = _multiply_shift(self.keys[homeless], multipliers, 64 - bits, 1 << bits)
            occupant = slots[target]
            slots[target] = homeless
            won = slots[target] == homeless
            evicted = occupant[won]
            homeless = torch.cat([homeless[~won], evicted[evicted > 0]])
            choice[homeless] = (choice[homeless] + 1) % len(self._MULTIPLIERS)
        return None

    def fn(self) -> PairLookupFn:
        slots, keys, num_src = self.slots, self.keys, self.num_src
        shift, size = 64 - self.bits, 1 << self.bits

        def lookup(q: Tensor, kv: Tensor) -> Tensor:
            key = q.long() * num_src + kv  # FlexAttention indices are int32: widen first
            found = None
            for multiplier in HashLookup._MULTIPLIERS:
                candidate = slots[_multiply_shift(key, multiplier, shift, size)]
                hit = torch.where(keys[candidate] == key, candidate, 0)
                found = hit if found is None else torch.maximum(found, hit)
            return found

        return lookup

    def apply(self, fn: Callable[[Tensor], Tensor]) -> HashLookup:
        moved = object.__new__(HashLookup)
        moved.num_src, moved.bits = self.num_src, self.bits
        moved.keys, moved.slots = fn(self.keys), fn(self.slots)
        return moved


class BlockDiagonalLookup:
    """Pair ids of a block-diagonal layout, every pair ``(kv, q)`` inside one block of ``B``
    slots: ``rows`` ``[S_pad * B]`` int64 holding ``pair id + 1`` at ``q * B + kv % B`` (0: no
    pair), so that the dense backend's ``[nb, 1, B, B]`` index grids read it with one gather.
    Answers only indices with ``kv`` in ``q``'s block (the only ones the dense backend forms).

    int64 because its entries index tables of learned values, and the dense grids index it."""

    kind = "block_diagonal"

    def __init__(self, pair_index: Tensor, padded_slots: int, size: int):
        src, dst = pair_index
        self.block_size = size
        self.rows = torch.zeros(padded_slots * size, dtype=torch.long, device=src.device)
        self.rows[dst * size + src % size] = torch.arange(1, src.numel() + 1, device=src.device)

    def fn(self) -> PairLookupFn:
        rows, size = self.rows, self.block_size

        def lookup(q: Tensor, kv: Tensor) -> Tensor:
            return rows[q * size + kv % size]

        return lookup

    def apply(self, fn: Callable[[Tensor], Tensor]) -> BlockDiagonalLookup:
        moved = object.__new__(BlockDiagonalLookup)
        moved.block_size, moved.rows = self.block_size, fn(self.rows)
        return moved


def _multiply_shift(key: Tensor, multiplier: int | Tensor, shift: int, size: int) -> Tensor:
    """Hash int64 keys into ``[0, size)``: the top bits of the wrapped product ``key * m``.

    ``shift`` and ``size`` (``64 - bits`` and ``1 << bits``) are plain ints computed outside any
    traced code and applied with ``remainder`` rather than a mask: under ``torch.compile`` a
    captured int may turn symbolic, and a symbolic ``2 ** bits`` became a float index.
    """
    return torch.remainder((key * multiplier) >> shift, size)


def lookup_kind(kind: str, num_pairs: int, num_tiles: int, size: int) -> str:
    """``'tiles'`` or ``'hash'``: ``kind`` itself, or for ``'auto'`` tiles unless their
    ``(num_tiles + 1) * size²`` entries exceed ``TILE_BUDGET_PER_PAIR`` per pair (counting at
    least 4096 pairs). Raises ``ValueError`` for an unknown ``kind``."""
    if kind not in LOOKUPS:
        raise ValueError(f"lookup must be one of {LOOKUPS}, got {kind!r}")
    if kind != "auto":
        return kind
    tile_entries = (num_tiles + 1) * size * size
    return "tiles" if tile_entries <= TILE_BUDGET_PER_PAIR * max(num_pairs, 4096) else "hash"


def build_pair_lookup(
    pair_index: Tensor,
    num_src: int,
    block_key: Tensor,
    tile_of_pair: Tensor,
    num_tiles: int,
    q_blocks: int,
    kv_blocks: int,
    size: int,
    kind: str = "auto",
) -> TileLookup | HashLookup:
    """Choose (:func:`lookup_kind`) and build the pair look-up of sorted unique pairs
    ``pair_index`` ([2, P]).

    ``block_key``/``tile_of_pair`` come from the block lists the ``BlockMask`` is built from:
    the unique (q_block, kv_block) keys and the 1-based tile of each pair.
    """
    src, dst = pair_index
    kind = lookup_kind(kind, src.numel(), num_tiles, size)
    if kind == "hash":
        return HashLookup(dst * num_src + src, num_src)
    tile_of_block = torch.zeros(q_blocks * kv_blocks, dtype=torch.long, device=src.device)
    tile_of_block[block_key] = torch.arange(1, num_tiles + 1, device=src.device)
    return TileLookup(dst, src, tile_of_pair, tile_of_block.view(q_blocks, kv_blocks), size)
