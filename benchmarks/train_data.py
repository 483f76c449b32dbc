"""``bench_train.py``'s data: the dataset through the real ``ogb`` path, the seeded loader every
model shares (ours collating structures, the peers through PyG's loader), and the collate costs
timed apart from the steps."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader
from torch_geometric.loader import DataLoader as PygDataLoader

from benchmarks.train_models import HOP_DISTANCE
from benchmarks.train_profile import clock
from pyg_mup.data import OGBData, load_dataset
from pyg_mup.graph import AddHopDistance, StructureCollater


def load(args: argparse.Namespace) -> OGBData:
    """The dataset through :func:`pyg_mup.data.load_dataset` (the real ``ogb`` path), with hop
    distances stored per graph when a model attends globally."""
    attends_globally = any(name != "ours-local" and name.startswith("ours") for name in args.models)
    transform = AddHopDistance() if attends_globally else None
    return load_dataset(args.dataset, args.root, args.cache_dir, pre_transform=transform)


def train_loader(data: OGBData, args: argparse.Namespace, collate: Callable | None) -> DataLoader:
    """The train split, shuffled by a generator seeded with ``--seed``: every model (and every
    pass) sees the same batches in the same order. Ours: torch's ``DataLoader`` with
    ``collate`` (:func:`train_models.collater`, building the structures in the workers); the
    peers: PyG's ``DataLoader``. Pinned on CUDA; workers persist across the passes."""
    train = data.dataset[data.split_idx["train"]]
    options = dict(
        batch_size=args.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(args.seed), num_workers=args.num_workers,
        pin_memory=args.device.type == "cuda", persistent_workers=args.num_workers > 0,
    )  # fmt: skip
    if collate is None:
        return PygDataLoader(train, exclude_keys=[HOP_DISTANCE], **options)
    return DataLoader(train, collate_fn=collate, **options)


def collate_costs(loader: DataLoader, args: argparse.Namespace) -> dict:
    """Host ms per batch of the loader's collate (outside the step; in the workers when
    ``--num-workers`` > 0), median over the first ``--collate-batches`` batches of a shuffled
    order, timed here in the main process: the whole collate (PyG's ``Batch``, plus ours'
    structures) and ours' structure build alone."""
    order = torch.randperm(len(loader.dataset), generator=torch.Generator().manual_seed(args.seed))
    collate_ms, build_ms = [], []
    for index in order.split(args.batch_size)[: args.collate_batches]:
        items = [loader.dataset[i] for i in index.tolist()]
        with clock(collate_ms):
            item = loader.collate_fn(items)
        if isinstance(loader.collate_fn, StructureCollater):
            with clock(build_ms):
                loader.collate_fn.spec.build_batch(item.batch)
    median_ms = lambda seconds: statistics.median(seconds) * 1e3 if seconds else 0.0  # noqa: E731
    return dict(collate_ms_per_batch=median_ms(collate_ms),
                structure_build_ms_per_batch=median_ms(build_ms))  # fmt: skip
