"""Per-pair tables of learned values, and the gather that makes them cheap to differentiate.

A mod that reads a *learned* tensor makes FlexAttention's backward atomically add each score's
gradient into the row it read. Rows shared by many scores (a no-edge bias, a distance embedding,
one "no pair" row for every masked entry) serialise those atomics (19–39× slower forward +
backward on an H200, benchmarks/README.md). So learned values are materialised into one row per
attended pair before the mods read them, and masked entries of local attention read one of
``SINK_ROWS`` zero rows spread by their position.
"""

from __future__ import annotations

import torch
from torch import Tensor

SINK_ROWS = 4096


class _TableRows(torch.autograd.Function):
    """``table[index]`` for a small ``[D, H]`` table read by many indices (hop distances).

    Same forward as indexing; the backward sums the gradient rows of each table row with one
    matrix product, ``one_hot(index)ᵀ [D, R] @ grad [R, H]``. Indexing's own backward adds the
    duplicates of a row one after another: with ``max_distance + 2`` rows read by the Σ n_g²
    pairs of 128 molecules, it took 70 ms of a 75 ms backward pass on an H200.
    """

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.num_rows = table.size(0)
        return table[index]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        rows = torch.arange(ctx.num_rows, device=index.device).unsqueeze(1)
        one_hot = (index.unsqueeze(0) == rows).to(grad.dtype)
        with torch.autocast(grad.device.type, enabled=False):
            return one_hot @ grad, None


def small_table_rows(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]`` (``[D, H]`` by ``[R]`` → ``[R, H]``) with a fast backward for small D."""
    return _TableRows.apply(table, index)


def capped_rows(table: Tensor, distance: Tensor) -> Tensor:
    """Rows of a distance embedding ``[max_distance + 2, H]`` for hop counts ``[R]``: distances
    beyond the table's last row (farther, or unreachable) read that row."""
    return small_table_rows(table, distance.clamp(max=table.size(0) - 1))


def sink_padded(values: Tensor) -> Tensor:
    """``[P, H]`` pair values → ``[1 + P + SINK_ROWS, H]``: row 0 and the sink rows are zero, so
    row ``pair + 1`` is pair ``pair`` and any non-pair entry reads a zero."""
    padding = values.new_zeros(1 + SINK_ROWS, values.size(1))
    return torch.cat([padding[:1], values, padding[1:]])
