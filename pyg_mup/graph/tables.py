"""Per-pair tables of learned values, and the gather that makes them cheap to differentiate.

A mod that reads a *learned* tensor makes FlexAttention's backward atomically add each score's
gradient into the row it read. Rows shared by many scores (a no-edge bias, a distance embedding,
one "no pair" row for every masked entry) serialise those atomics (19–39× slower forward +
backward on an H200, benchmarks/README.md). So learned values are materialised into one row per
attended pair before the mods read them, and masked entries of local attention read one of
``SINK_ROWS`` zero rows spread by their position.
"""

from __future__ import annotations

from collections.abc import Callable

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


class OwnPairRows:
    """``pair_row`` of a structure bound to the message-passing backend: ``(q, kv) -> rows``.

    The backend calls the mods with its own ``[P, 1]`` pair indices ``q``/``kv`` (by identity)
    and ``[1, H]`` head index (:meth:`heads`); those indices answer rows ``first … first + P - 1``
    (``rows``, ``[P, 1]``) with no look-up, and any other indices go to ``other``. :meth:`read`
    reads a ``[R, H]`` table there as the rows in table order, with no gather: indexing's
    backward is an ``index_put`` accumulate per table read.
    """

    def __init__(
        self, q: Tensor, kv: Tensor, rows: Tensor, first: int, other: Callable[..., Tensor]
    ) -> None:
        self.q, self.kv, self.rows, self.first, self.other = q, kv, rows, first, other
        self._heads: dict[int, Tensor] = {}

    def __call__(self, q: Tensor, kv: Tensor) -> Tensor:
        if q is self.q and kv is self.kv:
            return self.rows
        return self.other(q, kv)

    def heads(self, num_heads: int) -> Tensor:
        """The ``[1, H]`` head index the backend gives mods, made once per bound structure."""
        if num_heads not in self._heads:
            self._heads[num_heads] = torch.arange(num_heads, device=self.q.device).unsqueeze(0)
        return self._heads[num_heads]

    def read(self, table: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        """``table[self(q, kv), h]``: at the backend's own indices and heads, the table's rows
        ``first …`` in order and all its columns — the table itself, or a slice of it."""
        own = q is self.q and kv is self.kv and h is self._heads.get(h.size(-1))
        if own and table.dim() == 2 and table.size(1) == h.size(1):
            count = self.q.size(0)
            return (
                table
                if (self.first, count) == (0, table.size(0))
                else table.narrow(0, self.first, count)
            )
        return table[self(q, kv), h]
