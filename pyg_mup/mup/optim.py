"""μP learning rates as optimizer parameter groups.

Each parameter's lr is the tuned base lr times a factor from its `WidthInfo` (set by
`set_base_shapes`); parameters with the same factors share a group. Per Tensor Programs V
(Table 8, Adam; Table 3, SGD), in microsoft/mup's form:

| parameter                                        | Adam-like lr   | SGD-like lr            |
|--------------------------------------------------|----------------|------------------------|
| hidden matrix (2 width dims)                     | / fan_in_mult  | × fan_out / fan_in mult|
| vector-like (1 width dim: input weights, biases, | unchanged      | × width_mult           |
|   embeddings, norms, MuReadout weight)           |                |                        |
| GAT-style attention vector `(1, H, C)`           | / width_mult   | / width_mult           |
| fixed (no width dim)                             | unchanged      | unchanged              |

Depth-μP marks (`depth.mark_residual_branch`) multiply the Adam lr by `1/sqrt(depth_mult)`.

Weight decay (`decoupled_wd`, as in microsoft/mup): `torch.optim.AdamW` and `SGD` shrink a
weight by `lr · weight_decay` per step (`Adam` adds `weight_decay · p` to the gradient). With
`decoupled_wd=False` (default, microsoft/mup 1.0's behaviour) each group's weight decay is divided
by its lr factor, so `lr · weight_decay`, the decay per step, is the same at every width, which is
what transfers. Use `decoupled_wd=True` for optimizers whose decay is not multiplied by the lr
(fully decoupled, e.g. composer's `DecoupledAdamW`): the weight decay is then left as given.

The groups work with any `torch.optim` optimizer and LR scheduler (schedulers scale each group's
lr by the same factor, keeping the μP ratios).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import SGD, Adam, AdamW, Optimizer

from .depth import depth_lr_factor
from .shape import WidthInfo, _require_info

ParamsLike = nn.Module | Iterable[Any]
_OPTIMIZERS = ("adam", "adamw", "sgd")


def _width_lr_factor(info: WidthInfo, optimizer: str) -> float:
    if info.ninf > 2:
        raise ValueError(f"μP rules cover at most 2 width dims; a parameter has {info.ninf}")
    if info.readout_vector:
        return 1.0 / info.width_mult
    if info.ninf == 2:
        if optimizer == "sgd":
            return info.fan_out_mult / info.fan_in_mult
        return 1.0 / info.width_mult
    if info.ninf == 1 and optimizer == "sgd":
        return info.width_mult
    return 1.0


def _named_groups(params: ParamsLike) -> list[dict]:
    """Normalise a model / parameters / (name, parameter) pairs / param groups to groups of
    `(name, parameter)` pairs (names only serve error messages)."""
    if isinstance(params, nn.Module):
        return [{"params": list(params.named_parameters())}]
    items = list(params)
    if items and isinstance(items[0], dict):
        groups = [dict(g) for g in items]
    else:
        groups = [{"params": items}]
    for g in groups:
        ps = g["params"]
        ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
        g["params"] = [
            p if isinstance(p, tuple) else (f"of shape {tuple(p.shape)} (#{i} in its group)", p)
            for i, p in enumerate(ps)
        ]
    return groups


def mup_param_groups(
    model_or_params: ParamsLike,
    lr: float | None = None,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    decoupled_wd: bool = False,
) -> list[dict]:
    """Split parameters into groups carrying their μP `lr` and `weight_decay`.

    Args:
        model_or_params: a model (best: errors name the parameter), an iterable of parameters
            or of `(name, parameter)` pairs, or param groups (dicts; their other keys are kept,
            and their own `lr`/`weight_decay` override the arguments).
        lr: base learning rate (the one tuned at base width).
        weight_decay: base weight decay; see the module docstring for `decoupled_wd`.
        optimizer: `'adam'`/`'adamw'` for Adam-like (entrywise-normalised) updates, `'sgd'` for
            SGD-like ones.

    Raises `ValueError` for a parameter without base shapes (call `set_base_shapes` first).
    """
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {optimizer!r}")
    out: list[dict] = []
    for group in _named_groups(model_or_params):
        base_lr = group.get("lr", lr)
        if base_lr is None:
            raise ValueError("lr must be given, as an argument or in every param group")
        base_wd = group.get("weight_decay", weight_decay)
        split: dict[float, dict] = {}
        for name, p in group["params"]:
            factor = _width_lr_factor(_require_info(name, p), optimizer) * depth_lr_factor(
                p, optimizer
            )
            if factor not in split:
                new = {k: v for k, v in group.items() if k != "params"}
                new["lr"] = base_lr * factor
                new["weight_decay"] = base_wd if decoupled_wd else base_wd / factor
                new["params"] = []
                split[factor] = new
            split[factor]["params"].append(p)
        out.extend(split.values())
    return out


# CamelCase functions, as in microsoft/mup, so μP users find them.
def MuAdam(
    params: ParamsLike, impl: type[Optimizer] = Adam, decoupled_wd: bool = False, **kwargs: Any
) -> Optimizer:
    """`impl` (default `torch.optim.Adam`) with μP learning rates; kwargs go to `impl`.

    Works for any Adam-like optimizer (RMSProp, Adagrad, …) passed as `impl`.
    """
    groups = mup_param_groups(
        params, kwargs.get("lr"), kwargs.get("weight_decay", 0.0), "adam", decoupled_wd
    )
    return impl(groups, **kwargs)


def MuAdamW(params: ParamsLike, decoupled_wd: bool = False, **kwargs: Any) -> Optimizer:
    """`torch.optim.AdamW` with μP learning rates."""
    return MuAdam(params, impl=AdamW, decoupled_wd=decoupled_wd, **kwargs)


def MuSGD(
    params: ParamsLike, impl: type[Optimizer] = SGD, decoupled_wd: bool = False, **kwargs: Any
) -> Optimizer:
    """`impl` (default `torch.optim.SGD`) with μP learning rates; kwargs go to `impl`."""
    groups = mup_param_groups(
        params, kwargs.get("lr"), kwargs.get("weight_decay", 0.0), "sgd", decoupled_wd
    )
    return impl(groups, **kwargs)
