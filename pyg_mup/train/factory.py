"""Model, optimizer and learning-rate schedule of a run, in μP or its SP twin.

μP (default): the model is built by :func:`pyg_mup.mup.build_mup_model` against base and delta
copies at ``base_width`` and ``2 * base_width`` (on the meta device), and trained with
:func:`pyg_mup.mup.MuAdamW`, so a learning rate tuned at ``base_width`` transfers to ``width``.
SP (``--no-mup``): the same architecture and the same init at base width, standard
parametrization (``set_base_shapes(model, None)``), plain ``torch.optim.AdamW``.

Two options act on the built model, so that the model code needs no flag for them:
``--zero-query`` zeroes every attention's ``lin_query`` (Tensor Programs V's zero-query init:
attention starts uniform over the allowed keys), and ``--depth-parametrization`` scales each
block's residual branches (its attention convolutions, message-passing branch and FFN) by
:func:`pyg_mup.mup.depth_multiplier` with forward hooks and marks the block's parameters for the
optimizer's depth lr factor (:mod:`pyg_mup.mup.depth`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform, Compose

from pyg_mup.data import Task, dataset_level
from pyg_mup.graph import AddHopDistance
from pyg_mup.models import GraphTransformer, NodeTransformer, feature_specs
from pyg_mup.models.encodings import encoding_transform
from pyg_mup.models.gine import GINEVirtualNode, count_parameters, matched_width
from pyg_mup.mup import (
    ALPHAS,
    MuAdamW,
    adam_eps,
    build_mup_model,
    depth_multiplier,
    mark_residual_branch,
    scale_residual_branch,
    set_base_shapes,
)

from .config import ConfigError, TrainConfig

ADAM_EPS = 1e-8
"""``torch.optim.AdamW``'s default ε, the base-shape value the width and depth rules scale."""


def model_builder(config: TrainConfig, task: Task, example: Data) -> Callable[[int], nn.Module]:
    """``width -> model`` for the dataset's level and features (``example``: one graph)."""
    common = _common_arguments(config, task, example)
    if task.level == "node":
        return lambda width: NodeTransformer(width=width, heads=config.heads, **common)
    if config.model == "gine":
        return lambda width: GINEVirtualNode(width=width, encodings=config.pe, **common)
    return lambda width: GraphTransformer(
        width=width,
        heads=config.heads,
        attention=config.attention,
        max_distance=config.max_distance,
        local_branch=None if config.local_branch == "none" else config.local_branch,
        encodings=config.pe,
        attention_dropout=config.attention_dropout,
        virtual_node=config.virtual_node,
        **common,
    )


def _common_arguments(config: TrainConfig, task: Task, example: Data) -> dict[str, Any]:
    x = example.x if "x" in example else None
    edge_attr = example.edge_attr if "edge_attr" in example else None
    node_spec, edge_spec = feature_specs(task.name, x, edge_attr)
    return dict(
        out_channels=task.out_channels,
        layers=config.layers,
        dropout=config.dropout,
        output_mult=config.output_mult,
        node_features=node_spec,
        edge_features=edge_spec,
    )


def model_widths(config: TrainConfig, task: Task, example: Data) -> tuple[int, int]:
    """``(width, base_width)`` the model is built at: the configured ones, or with
    ``--match-parameters`` the GINE widths whose parameter counts are closest to the
    GraphTransformer's of the same settings at each (counted on the meta device)."""
    if not config.match_parameters:
        return config.width, config.base_width
    transformer = model_builder(
        dataclasses.replace(config, model="transformer", match_parameters=False), task, example
    )
    gine = {**_common_arguments(config, task, example), "encodings": config.pe}
    del gine["layers"]

    def matched(width: int) -> int:
        with torch.device("meta"):
            target = count_parameters(transformer(width))
        return matched_width(target, config.layers, **gine)

    return matched(config.width), matched(config.base_width)


def dataset_transform(config: TrainConfig) -> BaseTransform | None:
    """The ``pre_transform`` the run's model reads: hop distances for global attention and the
    stored node encodings, computed once per dataset and cached with it (``None`` for node-level
    datasets: the NodeTransformer reads neither)."""
    if dataset_level(config.dataset) == "node":
        return None
    transforms = []
    if config.model == "transformer" and config.attention != "local":
        transforms.append(AddHopDistance())
    encodings = encoding_transform(config.pe)
    if encodings is not None:
        transforms.append(encodings)
    if not transforms:
        return None
    return transforms[0] if len(transforms) == 1 else Compose(transforms)


def make_model(config: TrainConfig, task: Task, example: Data) -> nn.Module:
    """The run's model with its width information set (μP or SP), on the CPU."""
    build = model_builder(config, task, example)
    width, base_width = model_widths(config, task, example)
    if config.mup:
        model = build_mup_model(build, width, base_width)
    else:
        model = set_base_shapes(build(width), None)
    if config.zero_query:
        zero_queries(model)
    if config.depth_parametrization != "none":
        scale_depth(model, config.layers, base_layers(config), ALPHAS[config.depth_parametrization])
    return model


def base_layers(config: TrainConfig) -> int:
    """The depth the hyperparameters were tuned at (``--layers`` when not given)."""
    return config.layers if config.base_layers is None else config.base_layers


def zero_queries(model: nn.Module) -> int:
    """Zero the weight (and bias) of every ``lin_query`` projection; returns how many."""
    count = 0
    for module in model.modules():
        query = getattr(module, "lin_query", None)
        if isinstance(query, nn.Module):
            for param in query.parameters():
                nn.init.zeros_(param)
            count += 1
    if not count:
        raise ConfigError("--zero-query: the model has no attention with a lin_query projection")
    return count


def residual_branches(block: nn.Module) -> list[nn.Module]:
    """A Transformer block's residual branches: its attention convolutions, its
    message-passing branch if any, and its FFN."""
    attn, ffn = getattr(block, "attn", None), getattr(block, "ffn", None)
    if not isinstance(attn, nn.ModuleDict) or not isinstance(ffn, nn.Module):
        raise ConfigError(
            "--depth-parametrization needs blocks with .attn (ModuleDict) and .ffn branches; "
            f"{type(block).__name__} has none"
        )
    local = getattr(block, "local_branch", None)
    return [*attn.values(), *([local] if local is not None else []), ffn]


def scale_depth(model: nn.Module, layers: int, base: int, alpha: float) -> None:
    """Apply a depth parametrization to ``model.blocks`` and to the virtual node, whose updates
    (its own residual stream) and whose message added to the nodes before every block would
    otherwise grow with depth (see :mod:`pyg_mup.mup.depth`)."""
    multiplier = depth_multiplier(layers, base, alpha)
    branches = []
    for block in model.blocks:
        mark_residual_branch(block, layers, base, alpha)
        branches += residual_branches(block)
    for update in getattr(model, "virtual_mlps", None) or ():
        mark_residual_branch(update, layers, base, alpha)
        branches.append(update)
    if getattr(model, "virtual_input", None) is not None:
        branches.append(model.virtual_input)
    for branch in branches:
        scale_residual_branch(branch, multiplier)


def make_optimizer(config: TrainConfig, model: nn.Module) -> Optimizer:
    """AdamW, with μP lr groups (``--mup``) and CompleteP's ε.

    Under μP the hidden weights' gradients shrink like ``1/width`` (the readout's multiplier),
    so a fixed ε comes to dominate Adam's denominator as the model widens and damps the very
    updates μP keeps constant: ε is scaled by ``width_mult^-1`` (and by the depth rule's
    ``depth_mult^-α``), as CompleteP prescribes. The SP twin keeps torch's ε.
    """
    width_mult = config.width / config.base_width if config.mup else 1.0
    depth_mult = config.layers / base_layers(config)
    alpha = ALPHAS.get(config.depth_parametrization, 0.0)
    eps = adam_eps(ADAM_EPS, width_mult, depth_mult, alpha)
    if config.mup or config.depth_parametrization != "none":  # SP: width factors are all 1
        return MuAdamW(model, lr=config.lr, weight_decay=config.weight_decay, eps=eps)
    return AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, eps=eps)


def make_scheduler(config: TrainConfig, optimizer: Optimizer, total_steps: int) -> LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then constant or, with
    ``lr_schedule='cosine'``, a half cosine down to zero at step ``total_steps`` (the whole run).

    The constant schedule depends on the step count only, never on ``--epochs``: a run extended
    with ``--resume --epochs N`` follows the same learning rates as one started with ``N``
    (the cosine one cannot be extended; :func:`resumed_config` refuses).
    """
    warmup = config.warmup_steps
    cosine = config.lr_schedule == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = min(1.0, (step - warmup) / max(total_steps - warmup, 1))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
