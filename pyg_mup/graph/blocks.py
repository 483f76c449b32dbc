"""FlexAttention ``BlockMask`` from block lists, never from N² mask evaluations.

``create_block_mask`` evaluates the mask on all N² pairs (24–42 ms at 45–61k nodes on an H200).
Here the non-empty blocks are known from the pairs (local attention) or from the graph ranges
(global attention), and the mask is assembled with ``BlockMask.from_kv_blocks``. A block is
*full* when every entry in it is allowed, so FlexAttention skips its ``mask_mod``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask

from .signatures import MaskMod

FLEX_MIN_BLOCK_DENSITY = {torch.bfloat16: 1 / 64, torch.float16: 1 / 64, torch.float32: 1 / 16}
"""On CUDA, FlexAttention pays for local attention when at least this share of the scores it
computes are attention pairs (``LocalStructure.block_density``), per compute dtype (others:
float32's). Measured on an H200 (benchmarks/README.md, "Where FlexAttention starts to pay"):
FlexAttention's time hardly grows with the share of its tiles that hold edges, message
passing's grows with the edges, and they cross between 1/128 and 1/64 in bf16 and near 1/16 in
float32. Local structures on CUDA build their block mask from the lowest of these."""

DENSE_MIN_BLOCK_DENSITY = 1 / 4
"""On the CPU, the blocked dense backend pays for local attention when at least this share of
the ``B²`` entries of its blocks are attention pairs (``LocalStructure.block_density`` of a
packed layout): it computes every entry of a block, message passing only the pairs. Measured
with ``benchmarks/bench_dense_cpu.py --skip-global`` (``results/dense_cpu_local.json``: the local
layer's forward and backward on each backend, float32, 1 thread, a loaded machine): the medians
cross at 1/4 for B = 16 (dense 0.95–1.04× message passing there), 1/5–1/7 for B = 32, 1/7–1/11
for 64 and 1/12–1/13 for 128, with or without the edge bias. The largest crossover is kept, so
``'auto'`` never picks dense where it loses; molecules fill 1/36–1/64 and keep message passing.
Local structures built for the CPU pack their nodes (``layout='auto'``) only when they reach it,
and ``backend='auto'`` picks the dense backend from it."""


def num_blocks(length: int, size: int) -> int:
    return max(1, -(-length // size))


@dataclass(eq=False)
class BlockList:
    """Sorted (query block, key block) pairs that hold allowed entries, and which are full."""

    q: Tensor
    kv: Tensor
    full: Tensor

    def apply(self, fn: Callable[[Tensor], Tensor]) -> BlockList:
        return BlockList(fn(self.q), fn(self.kv), fn(self.full))


def local_blocks(
    pair_index: Tensor, seq_dst: int, seq_src: int, size: int
) -> tuple[BlockList, Tensor, Tensor]:
    """Blocks touched by the pairs ``[2, P]``: ``(blocks, unique block keys, tile of each pair)``.

    A local block is full when all ``size²`` entries are pairs and it lies wholly inside both
    sequences. The block keys ``q_block * KB + kv_block`` (sorted) and the 1-based tile of each
    pair are what the tile look-up is built from.
    """
    src, dst = pair_index
    kv_blocks = num_blocks(seq_src, size)
    key = (dst // size) * kv_blocks + src // size
    block_key, tile_of_pair, count = torch.unique(
        key, sorted=True, return_inverse=True, return_counts=True
    )
    block_q, block_kv = block_key // kv_blocks, block_key % kv_blocks
    full = (
        (count == size * size)
        & ((block_q + 1) * size <= seq_dst)
        & ((block_kv + 1) * size <= seq_src)
    )
    return BlockList(block_q, block_kv, full), block_key, tile_of_pair + 1


def global_blocks(node_graph: Tensor, starts: Tensor, sizes: Tensor, size: int) -> BlockList:
    """Blocks that within-graph attention touches, from the slot → graph map.

    ``node_graph``: ``[QB * B]`` graph of each slot (-1 = padding). Graphs occupy contiguous
    slot ranges, so a query block's allowed keys form one contiguous range, from the first slot
    of its first graph to the last slot of its last graph. A block is full when all its slots
    hold nodes of one graph, and so do the key block's. Runs where the graph sizes are known
    (the host, in the data pipeline).
    """
    device = node_graph.device
    per_block = node_graph.view(-1, size)
    block = torch.arange(per_block.size(0), device=device)
    if sizes.numel() == 0:
        empty = block[:0]
        return BlockList(empty, empty, empty.bool())
    real = per_block >= 0
    has_nodes = real.any(1)
    first = torch.where(real, per_block, per_block.new_full((), 2**62)).amin(1)
    last = per_block.amax(1)
    first, last = first.clamp(max=sizes.numel() - 1), last.clamp(min=0)
    kv_lo = starts[first] // size
    kv_hi = (starts[last] + sizes[last] - 1) // size
    allowed = (block[None, :] >= kv_lo[:, None]) & (block[None, :] <= kv_hi[:, None])
    allowed &= has_nodes[:, None] & has_nodes[None, :]
    single = torch.where(real.all(1) & (first == last), first, -1)
    block_q, block_kv = allowed.nonzero().t()
    full = (single[block_q] == single[block_kv]) & (single[block_q] >= 0)
    return BlockList(block_q, block_kv, full)


def block_mask(
    blocks: BlockList,
    seq_dst: int,
    seq_src: int,
    size: int,
    mask_mod: MaskMod,
    keep_full_blocks: bool = True,
) -> BlockMask:
    """Assemble the ``BlockMask``; without ``keep_full_blocks`` every block is partial (for a
    mask ANDed with a layer's own, which may drop entries inside full blocks)."""
    q_blocks, kv_blocks = num_blocks(seq_dst, size), num_blocks(seq_src, size)
    full = blocks.full if keep_full_blocks else torch.zeros_like(blocks.full)
    kv_num, kv_idx = _block_lists(blocks.q[~full], blocks.kv[~full], q_blocks, kv_blocks)
    full_num, full_idx = _block_lists(blocks.q[full], blocks.kv[full], q_blocks, kv_blocks)
    return BlockMask.from_kv_blocks(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=size,
        mask_mod=mask_mod,
        seq_lengths=(seq_dst, seq_src),
    )


def _block_lists(
    block_q: Tensor, block_kv: Tensor, q_blocks: int, kv_blocks: int
) -> tuple[Tensor, Tensor]:
    """``(kv_num_blocks [1, 1, QB], kv_indices [1, 1, QB, KB])`` from sorted block pairs."""
    device = block_q.device
    count = torch.bincount(block_q, minlength=q_blocks)
    start = count.cumsum(0) - count
    rank = torch.arange(block_q.numel(), device=device) - start[block_q]
    indices = torch.zeros(q_blocks, kv_blocks, dtype=torch.int32, device=device)
    indices[block_q, rank] = block_kv.to(torch.int32)
    return count.to(torch.int32)[None, None], indices[None, None]


def map_block_mask(mask: BlockMask, fn: Callable[[Tensor], Tensor], mask_mod: MaskMod) -> BlockMask:
    """``mask`` with ``fn`` applied to its tensors (a move, a pin) and a new ``mask_mod`` (the
    old one captured tensors where they were). ``BlockMask.to`` would copy without
    ``non_blocking``, which from pinned memory waits for the device queue."""
    tensor_attrs = getattr(BlockMask, "_TENSOR_ATTRS", None)
    context_attrs = getattr(BlockMask, "_CONTEXT_ATTRS", None)
    if tensor_attrs is None or context_attrs is None:  # older torch: its own copy
        moved = mask.to(fn(mask.kv_indices).device)
        moved.mask_mod = mask_mod
        return moved
    values = {}
    for attr in tensor_attrs:
        value = getattr(mask, attr)
        values[attr] = fn(value) if isinstance(value, Tensor) else value
    values.update({attr: getattr(mask, attr) for attr in context_attrs})
    values["mask_mod"] = mask_mod
    return BlockMask(**values)
