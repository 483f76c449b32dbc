"""The callables structures hand to attention: FlexAttention's mod signatures and index maps."""

from collections.abc import Callable

from torch import Tensor

ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
"""``score_mod(score, b, h, q, kv) -> score``."""
MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""``mask_mod(b, h, q, kv) -> allowed``."""
IndexFn = Callable[[Tensor, Tensor], Tensor]
"""``(q, kv) -> index``, e.g. the row of a per-pair table."""
