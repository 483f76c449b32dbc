"""μP (maximal update parametrization) for PyTorch and PyG models.

Tune hyperparameters on a narrow model, train a wide one with the same values:
`build_mup_model`/`set_base_shapes` record how each parameter scales with width and apply the
μP init, `MuReadout` is the output layer, `MuAdam`/`MuAdamW`/`MuSGD`/`mup_param_groups` give the
μP learning rates, `coord_check` verifies it all. Attention modules exposing `base_head_channels`
get the μP `1/d` attention scale; `depth` holds the optional depth rules (depth-μP, CompleteP).
"""

from .coord_check import coord_check, plot_coord_check
from .depth import ALPHAS, adam_eps, depth_multiplier, mark_residual_branch, scale_residual_branch
from .optim import MuAdam, MuAdamW, MuSGD, mup_param_groups
from .readout import MuReadout, MuSharedReadout
from .shape import WidthInfo, build_mup_model, save_base_shapes, set_base_shapes, width_infos

__all__ = [
    "ALPHAS",
    "MuAdam",
    "MuAdamW",
    "MuReadout",
    "MuSGD",
    "MuSharedReadout",
    "WidthInfo",
    "adam_eps",
    "build_mup_model",
    "coord_check",
    "depth_multiplier",
    "mark_residual_branch",
    "mup_param_groups",
    "plot_coord_check",
    "save_base_shapes",
    "scale_residual_branch",
    "set_base_shapes",
    "width_infos",
]
