"""Output layers with the μP `1/width_mult` multiplier.

An output ("readout") layer maps the width dimension to a fixed size (classes, targets). Under μP
its effective weights must scale like `1/fan_in` instead of SP's `1/sqrt(fan_in)`, or the
output blows up as the model widens once the weights have moved (Tensor Programs V, Table 3).
As in microsoft/mup, the layer keeps an SP-sized weight and multiplies its input by
`output_mult / width_mult`; `set_base_shapes` sets `width_mult` as a plain float, so
`torch.compile` traces it as a constant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MuReadout(nn.Linear):
    """`nn.Linear` for the last layer of a μP model: `y = (output_mult / width_mult) x Wᵀ + b`.

    Args:
        in_channels: width of the input (scales with the model).
        out_channels: output size (fixed).
        bias: learn an additive bias.
        readout_zero_init: initialise weight and bias to zero (μP allows it; often helps).
        output_mult: tunable output multiplier, transferred across widths like the lr.

    Shapes: input `[*, in_channels]`, output `[*, out_channels]`.
    `width_mult` (fan-in width over base fan-in width) is `None` until `set_base_shapes` runs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        readout_zero_init: bool = False,
        output_mult: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.readout_zero_init = readout_zero_init
        self.output_mult = float(output_mult)
        self.width_mult: float | None = None
        super().__init__(in_channels, out_channels, bias=bias, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        if not self.readout_zero_init:
            super().reset_parameters()
            return
        with torch.no_grad():
            self.weight.zero_()
            if self.bias is not None:
                self.bias.zero_()

    def rescale_init(self) -> None:
        """SP → μP init: weight and bias × sqrt(width_mult), constant in width (as in mup)."""
        factor = math.sqrt(self.width_mult)
        with torch.no_grad():
            self.weight.mul_(factor)
            if self.bias is not None:
                self.bias.mul_(factor)

    def forward(self, x: Tensor) -> Tensor:
        if self.width_mult is None:
            raise RuntimeError(
                f"{type(self).__name__} has no width multiplier: call "
                "pyg_mup.mup.set_base_shapes(model, base) (base=None for standard parametrization)"
            )
        return F.linear(x * (self.output_mult / self.width_mult), self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, output_mult={self.output_mult}, width_mult={self.width_mult}"
        )


class MuSharedReadout(MuReadout):
    """`MuReadout` whose weight is tied to an input embedding's `[num_embeddings, width]` weight.

    Unlike microsoft/mup, the μP init rescale leaves the shared weight alone: it belongs to the
    embedding, whose N(0, 1) init is already width-independent; only the bias is rescaled.
    """

    def __init__(self, weight: nn.Parameter, bias: bool = True, **kwargs) -> None:
        super().__init__(weight.shape[1], weight.shape[0], bias=bias, **kwargs)
        self.weight = weight

    def rescale_init(self) -> None:
        if self.bias is not None:
            with torch.no_grad():
                self.bias.mul_(math.sqrt(self.width_mult))
