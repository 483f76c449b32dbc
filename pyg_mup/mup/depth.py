"""Transfer across depth: residual branches scaled by ``(L_base/L)^α``, with Adam rules to match.

In a residual network ``x ← x + m · branch(x)`` with ``L`` blocks, tuned at a base depth ``L₀``,
write ``m_L = L / L₀``. Two parametrizations, both 1 at ``L = L₀`` (so they only differ from
plain μP away from the base depth):

| rule (Adam, relative to the base depth)       | depth-μP (α = 1/2)   | CompleteP (α = 1)   |
|-----------------------------------------------|----------------------|---------------------|
| branch multiplier ``m``                       | ``m_L^-1/2``         | ``m_L^-1``          |
| lr of every parameter inside a branch         | ``× m_L^(α-1)``      | unchanged           |
|   (hidden weights, their biases, LayerNorms)  |   ``= m_L^-1/2``     |                     |
| init of hidden weights and LayerNorms         | unchanged            | unchanged           |
| Adam ε                                        | ``× m_N^-1 m_L^-α``  | ``× m_N^-1 m_L^-1`` |
| embeddings, final norm, readout               | unchanged            | unchanged           |

depth-μP: Yang, Yu, Zhu, Hayou (2023), "Tensor Programs VI: Feature Learning in Infinite-Depth
Neural Networks" (SGD keeps its lr). CompleteP: Dey et al. (2025), "Don't be lazy: CompleteP
enables compute-efficient deep transformers", Table 1, as its reference code
(EleutherAI/nanoGPT-mup, branch ``completep``) applies it: one rule set in α, the hidden weights'
lr ``η m_N^-1 m_L^(α-1)``, the in-block norms' and biases' ``η m_L^(α-1)``, ε ``m_N^-1 m_L^-α``
(``m_N``: the μP width multiplier). Its table is for Adam(W); under SGD the lr factor here is 1.
The theory covers blocks of one hidden layer; for deeper blocks it is a heuristic.

Off unless the model code (or the trainer) opts in::

    mult = depth_multiplier(num_layers, base_depth, alpha)        # in __init__
    for block in self.blocks:
        mark_residual_branch(block, num_layers, base_depth, alpha)
    ...
    x = x + mult * block(x)                                       # in forward

or, without touching ``forward``, :func:`scale_residual_branch` on each branch module.
`mup_param_groups`/`MuAdam` read the marks; the multiplier is a plain float (no graph break).
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

ALPHAS = {"depth-mup": 0.5, "completep": 1.0}
"""The residual-scaling exponent α of each named depth parametrization."""


def depth_multiplier(depth: int, base_depth: int, alpha: float = 0.5) -> float:
    """Residual-branch multiplier ``(base_depth / depth) ** alpha`` (α = 1/2: depth-μP)."""
    if depth < 1 or base_depth < 1:
        raise ValueError(f"depth and base_depth must be positive, got {depth} and {base_depth}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return (base_depth / depth) ** alpha


def mark_residual_branch(
    module: nn.Module, depth: int, base_depth: int, alpha: float = 0.5
) -> None:
    """Mark ``module``'s parameters as living in a residual branch of a ``depth``-block network.

    Sets ``p.depth_mult = depth / base_depth`` and ``p.depth_alpha = alpha``, which the μP
    optimizers turn into an Adam lr factor ``depth_mult ** (alpha - 1)``. Call it when building
    the model, like ``set_base_shapes``.
    """
    depth_multiplier(depth, base_depth, alpha)  # validates
    for p in module.parameters():
        p.depth_mult = depth / base_depth
        p.depth_alpha = alpha


def depth_lr_factor(p: Tensor, optimizer: str) -> float:
    """Depth lr factor for ``p``: ``depth_mult ** (alpha - 1)`` under Adam, 1 under SGD or
    for an unmarked parameter."""
    if optimizer == "sgd":
        return 1.0
    return getattr(p, "depth_mult", 1.0) ** (getattr(p, "depth_alpha", 0.5) - 1.0)


def adam_eps(eps: float, width_mult: float, depth_mult: float, alpha: float) -> float:
    """CompleteP's Adam ε: ``eps · width_mult^-1 · depth_mult^-alpha``.

    The gradients of a branch shrink with the branch multiplier; an ε left at its base value
    would come to dominate Adam's denominator in deep or wide models.
    """
    return eps / width_mult * depth_mult**-alpha


def scale_residual_branch(module: nn.Module, multiplier: float) -> RemovableHandle:
    """Multiply ``module``'s output by ``multiplier`` with a forward hook (for models whose
    ``forward`` adds the branch unscaled); returns the hook's handle."""
    if not math.isfinite(multiplier) or multiplier <= 0:
        raise ValueError(f"multiplier must be positive, got {multiplier}")

    def scale(_module: nn.Module, _inputs: object, out: Tensor) -> Tensor:
        return out * multiplier

    return module.register_forward_hook(scale)
