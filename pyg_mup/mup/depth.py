"""Depth-μP: residual branches scaled by 1/sqrt(depth) so hyperparameters also transfer in depth.

Yang, Yu, Zhu, Hayou (2023), "Tensor Programs VI: Feature Learning in Infinite-Depth Neural
Networks" (Depth-μP): in a residual network `x ← x + a/sqrt(L) · branch(x)` with `L` blocks,
the branch multiplier is `1/sqrt(L)` and, with Adam, the learning rate of the branch parameters
is `η/sqrt(L)` (SGD keeps `η`). Relative to a tuned base depth `L₀`, that is a multiplier
`sqrt(L₀/L)` and an Adam lr factor `sqrt(L₀/L)`, both 1 at `L = L₀`. The theory covers blocks
of one hidden layer; for deeper blocks it is a heuristic. Off unless the model code opts in:

    mult = depth_multiplier(num_layers, base_depth)        # in __init__
    for block in self.blocks:
        mark_residual_branch(block, num_layers, base_depth)
    ...
    x = x + mult * block(x)                                # in forward

`mup_param_groups`/`MuAdam` read the mark; the multiplier is a plain float (no graph break).
"""

from __future__ import annotations

import math

from torch import Tensor, nn


def depth_multiplier(depth: int, base_depth: int) -> float:
    """Residual-branch multiplier `sqrt(base_depth / depth)`."""
    if depth < 1 or base_depth < 1:
        raise ValueError(f"depth and base_depth must be positive, got {depth} and {base_depth}")
    return math.sqrt(base_depth / depth)


def mark_residual_branch(module: nn.Module, depth: int, base_depth: int) -> None:
    """Mark `module`'s parameters as living in a residual branch of a `depth`-block network.

    Sets `p.depth_mult = depth / base_depth`, which the μP optimizers turn into an Adam lr
    factor of `depth_mult ** -0.5`. Call it when building the model, like `set_base_shapes`.
    """
    depth_multiplier(depth, base_depth)  # validates
    for p in module.parameters():
        p.depth_mult = depth / base_depth


def depth_lr_factor(p: Tensor, optimizer: str) -> float:
    """Depth-μP lr factor for `p`: `1/sqrt(depth_mult)` under Adam, 1 under SGD or unmarked."""
    if optimizer == "sgd":
        return 1.0
    return getattr(p, "depth_mult", 1.0) ** -0.5
