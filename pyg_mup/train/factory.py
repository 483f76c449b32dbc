"""Model, optimizer and learning-rate schedule of a run, in μP or its SP twin.

μP (default): the model is built by :func:`pyg_mup.mup.build_mup_model` against base and delta
copies at ``base_width`` and ``2 * base_width`` (on the meta device), and trained with
:func:`pyg_mup.mup.MuAdamW`, so a learning rate tuned at ``base_width`` transfers to ``width``.
SP (``--no-mup``): the same architecture and the same init at base width, standard
parametrization (``set_base_shapes(model, None)``), plain ``torch.optim.AdamW``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR
from torch_geometric.data import Data

from pyg_mup.data import Task
from pyg_mup.models import GraphTransformer, NodeTransformer, feature_specs
from pyg_mup.mup import MuAdamW, build_mup_model, set_base_shapes

from .config import TrainConfig


def model_builder(config: TrainConfig, task: Task, example: Data) -> Callable[[int], nn.Module]:
    """``width -> model`` for the dataset's level and features (``example``: one graph)."""
    x = example.x if "x" in example else None
    edge_attr = example.edge_attr if "edge_attr" in example else None
    node_spec, edge_spec = feature_specs(task.name, x, edge_attr)
    common = dict(
        out_channels=task.out_channels,
        layers=config.layers,
        heads=config.heads,
        dropout=config.dropout,
        node_features=node_spec,
        edge_features=edge_spec,
    )
    if task.level == "node":
        return lambda width: NodeTransformer(width=width, **common)
    return lambda width: GraphTransformer(
        width=width, attention=config.attention, max_distance=config.max_distance, **common
    )


def make_model(config: TrainConfig, task: Task, example: Data) -> nn.Module:
    """The run's model with its width information set (μP or SP), on the CPU."""
    build = model_builder(config, task, example)
    if config.mup:
        return build_mup_model(build, config.width, config.base_width)
    return set_base_shapes(build(config.width), None)


def make_optimizer(config: TrainConfig, model: nn.Module) -> Optimizer:
    if config.mup:
        return MuAdamW(model, lr=config.lr, weight_decay=config.weight_decay)
    return AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
