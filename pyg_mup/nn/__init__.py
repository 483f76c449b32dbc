"""Attention layers: the :class:`MuPFlexAttention` base and :class:`FlexGraphConv`."""

from .attention import MuPFlexAttention
from .conv import FlexGraphConv

__all__ = ["FlexGraphConv", "MuPFlexAttention"]
