"""What one training step and one evaluation read: batches of graphs, or nodes of one graph.

Both workloads share one plan. Each epoch the train split is shuffled by a generator seeded
with ``(seed, epoch)`` — so epoch ``e`` sees the same order whether the run was resumed or
not — and cut into *global* batches of ``batch_size``. Under data parallelism every global batch
is split into ``world_size`` contiguous shards, one per rank: the ranks together process
exactly the single-process batch (no graph duplicated or dropped, unlike ``DistributedSampler``'s
padding), so a K-process run follows the single-process run's trajectory. Evaluation shards
each split the same way and gathers the predictions, so every split is scored exactly once,
over all its graphs, by ``ogb``'s Evaluator.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch_geometric.data import Batch, Data

from pyg_mup.data import OGBData
from pyg_mup.graph import StructureCollater, StructuredBatch, StructureSpec
from pyg_mup.models.encodings import encodings_of

from .config import ConfigError
from .distributed import Dist, gather_objects

EPOCH_SEED_STRIDE = 1_000_003


def epoch_order(indices: Tensor, seed: int, epoch: int) -> Tensor:
    """``indices`` shuffled for ``epoch`` (0-based) by a generator seeded with both."""
    generator = torch.Generator().manual_seed(seed * EPOCH_SEED_STRIDE + epoch)
    return indices[torch.randperm(indices.numel(), generator=generator)]


def batch_sizes(num_items: int, batch_size: int) -> list[int]:
    """The sizes ``num_items`` items are cut into: ``batch_size`` each, the rest last; a last
    batch of a single item joins the one before it. Batch-statistics layers (the GINE baseline's
    BatchNorm) cannot train on one graph, and dropping it would skip a graph every epoch
    (ogbg-molfreesolv: 513 = 8 · 64 + 1)."""
    full, rest = divmod(num_items, batch_size)
    sizes = [batch_size] * full + ([rest] if rest else [])
    if batch_size > 1 and len(sizes) > 1 and sizes[-1] == 1:
        sizes[-2:] = [batch_size + 1]
    return sizes


def global_batches(order: Tensor, batch_size: int) -> list[Tensor]:
    """``order`` cut into batches of :func:`batch_sizes`."""
    return list(order.split(batch_sizes(order.numel(), batch_size)))


def num_global_batches(num_items: int, batch_size: int) -> int:
    """``len(global_batches(...))`` of ``num_items`` items, without building them."""
    return len(batch_sizes(num_items, batch_size))


def shard(indices: Tensor, dist: Dist) -> Tensor:
    """This rank's contiguous share of ``indices`` (sizes differ by at most one)."""
    return torch.tensor_split(indices, dist.world_size)[dist.rank]


class _Collate:
    """``collate_fn``: graphs → :class:`StructuredBatch` with the model's structures (built
    here, in the loader's workers), or ``None`` for an empty shard. Picklable for workers."""

    def __init__(self, spec: StructureSpec | None) -> None:
        self.structures = StructureCollater(spec) if spec is not None else None

    def __call__(self, items: list[Data]) -> StructuredBatch | None:
        if not items:
            return None
        if self.structures is None:
            return StructuredBatch(Batch.from_data_list(items), {})
        return self.structures(items)


def _gather_in_order(parts: list[Tensor]) -> Tensor:
    """Concatenate this rank's ``parts``, then every rank's result in rank order."""
    local = torch.cat(parts) if parts else torch.empty(0)
    return torch.cat([t for t in gather_objects(local) if t.numel()])


class _Workload:
    """What both workloads share: the (possibly truncated) split, batch sizes, rank, device, seed.

    Args:
        data: the loaded dataset and split.
        batch_size: items per global batch (shared by all ranks).
        eval_batch_size: items per evaluation batch on each rank.
        dist: this process's rank and world size.
        device: where batches go.
        seed: the run's seed (epoch orders derive from it).
        max_samples: keep only the first ``max_samples`` items of each split (smoke tests).
    """

    def __init__(
        self,
        data: OGBData,
        batch_size: int,
        eval_batch_size: int,
        dist: Dist,
        device: torch.device,
        seed: int,
        max_samples: int | None,
    ) -> None:
        self.split = {k: v[:max_samples] for k, v in data.split_idx.items()}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.dist = dist
        self.device = device
        self.seed = seed

    @property
    def num_train(self) -> int:
        return self.split["train"].numel()

    def prepare_for(self, model: nn.Module) -> None:
        """Read what ``model`` needs per batch (nothing, unless a workload says otherwise)."""

    def split_sizes(self) -> str:
        """``train/valid/test a/b/c`` for the run banner."""
        sizes = "/".join(str(self.split[k].numel()) for k in ("train", "valid", "test"))
        return f"train/valid/test {sizes}"


class GraphWorkload(_Workload):
    """Graph property prediction: mini-batches of whole graphs (``ogbg-*``).

    Args:
        data: the loaded dataset and split.
        batch_size: graphs per global batch (shared by all ranks).
        eval_batch_size: graphs per evaluation batch on each rank.
        dist: this process's rank and world size.
        device: where batches go.
        seed: the run's seed (epoch orders derive from it).
        num_workers: ``DataLoader`` worker processes for collation.
        max_samples: keep only the first ``max_samples`` graphs of each split (smoke tests).
    """

    level = "graph"

    def __init__(
        self,
        data: OGBData,
        batch_size: int,
        eval_batch_size: int,
        dist: Dist,
        device: torch.device,
        seed: int,
        num_workers: int = 0,
        max_samples: int | None = None,
    ) -> None:
        super().__init__(data, batch_size, eval_batch_size, dist, device, seed, max_samples)
        self.dataset = data.dataset
        self.num_workers = num_workers
        first = self.dataset[int(self.split["train"][0])]
        self.example = first
        self.collate = _Collate(None)
        self.encodings: tuple[str, ...] = ()

    def prepare_for(self, model: nn.Module) -> None:
        """Read what ``model`` needs per batch: its structures (``structure_spec``), built in
        the loader from now on, and its stored node encodings."""
        spec = getattr(model, "structure_spec", None)
        self.collate = _Collate(spec(self.device.type) if spec is not None else None)
        encoder = getattr(model, "encodings", None)
        self.encodings = tuple(e for e in getattr(encoder, "encodings", ()) if e.attr_name)
        # A rank whose shard of the last global batch is empty still runs a forward pass (on
        # this graph, with zero weight) so that DDP's gradient all-reduce stays in step.
        self.placeholder = self.collate([self.example])

    def steps_per_epoch(self) -> int:
        return num_global_batches(self.num_train, self.batch_size)

    def y_train(self) -> Tensor:
        return self.dataset.y[self.split["train"]]

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch | None]:
        """This rank's batches of ``epoch`` from global step ``start_step`` on (``None``: an
        empty shard)."""
        order = epoch_order(self.split["train"], self.seed, epoch)
        plan = [shard(b, self.dist).tolist() for b in global_batches(order, self.batch_size)]
        yield from self._loader(plan[start_step:])

    def _loader(self, plan: list[list[int]]) -> DataLoader:
        # Its own generator: a DataLoader otherwise draws its workers' base seed from the global
        # RNG when iterated, shifting the dropout stream of a run resumed mid-epoch.
        return DataLoader(
            self.dataset,
            batch_sampler=plan,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),
        )

    def forward(
        self, model: nn.Module, item: StructuredBatch | None
    ) -> tuple[Tensor, Tensor, float]:
        """``(predictions, labels, weight)``; weight 0 marks the placeholder of an empty shard."""
        weight = 1.0
        if item is None:
            item, weight = self.placeholder, 0.0
        item = item.to(self.device, non_blocking=True)
        batch, extra = item.batch, {}
        if item.structures:
            extra["structures"] = item.structures
        if self.encodings:
            extra["encodings"] = encodings_of(batch, self.encodings)
        pred = model(
            batch.x,
            batch.edge_index,
            batch.edge_attr if "edge_attr" in batch else None,
            batch.batch,
            num_graphs=batch.num_graphs,
            **extra,
        )
        return pred, batch.y, weight

    def batch_size_of(self, item: StructuredBatch | None) -> int:
        return 0 if item is None else item.batch.num_graphs

    @torch.no_grad()
    def predict(
        self, model: nn.Module, splits: tuple[str, ...]
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """``{split: (labels, raw model outputs)}`` over each whole split, gathered on all ranks."""
        out = {}
        for split in splits:
            local = shard(self.split[split], self.dist)
            ys, preds = [], []
            plan = [b.tolist() for b in local.split(self.eval_batch_size)]
            for batch in self._loader(plan):
                pred, y, _ = self.forward(model, batch)
                ys.append(y.cpu())
                preds.append(pred.float().cpu())
            out[split] = (_gather_in_order(ys), _gather_in_order(preds))
        return out

    def describe(self) -> str:
        return f"{len(self.dataset)} graphs, {self.split_sizes()}"


class NodeWorkload(_Workload):
    """Node property prediction on one graph (``ogbn-*``).

    ``full`` mode runs the whole graph each step (one step per epoch) and needs it to fit in
    memory; ``sampled`` mode draws neighbourhoods of ``batch_size`` seed nodes with PyG's
    ``NeighborLoader`` (``num_neighbors`` per hop; needs ``pyg-lib`` or ``torch-sparse``).
    Directed graphs are made undirected, as is usual for ``ogbn-arxiv``.
    """

    level = "node"

    def __init__(
        self,
        data: OGBData,
        batch_size: int,
        eval_batch_size: int,
        dist: Dist,
        device: torch.device,
        seed: int,
        mode: str = "full",
        num_neighbors: tuple[int, ...] = (15, 10),
        max_samples: int | None = None,
    ) -> None:
        from torch_geometric.utils import to_undirected

        graph = data.dataset[0]
        edge_attr = graph.edge_attr if "edge_attr" in graph else None
        edge_index, edge_attr = to_undirected(
            graph.edge_index, edge_attr, graph.num_nodes, reduce="mean"
        )
        self.graph = Data(
            x=graph.x if "x" in graph else None,
            edge_index=edge_index,
            edge_attr=edge_attr,
            y=graph.y,
            num_nodes=graph.num_nodes,
        )
        self.example = self.graph
        super().__init__(data, batch_size, eval_batch_size, dist, device, seed, max_samples)
        self.mode = mode
        if mode == "full":
            if dist.enabled:
                raise ConfigError(
                    "full-graph node training runs in one process; use --node-batching sampled "
                    "for data-parallel runs"
                )
            self.graph_on_device = self.graph.to(device)
        elif mode == "sampled":
            import torch_geometric.typing
            from torch_geometric.loader import NeighborLoader

            if not (
                torch_geometric.typing.WITH_PYG_LIB or torch_geometric.typing.WITH_TORCH_SPARSE
            ):
                raise ConfigError(
                    "neighbour sampling (--node-batching sampled) needs pyg-lib or torch-sparse; "
                    "install one (see PyG's installation guide) or use --node-batching full"
                )

            self.sampler = NeighborLoader(
                self.graph, num_neighbors=list(num_neighbors), batch_size=1, shuffle=False
            )
        else:
            raise ConfigError(f"node batching must be 'full' or 'sampled', got {mode!r}")

    def steps_per_epoch(self) -> int:
        if self.mode == "full":
            return 1
        return num_global_batches(self.num_train, self.batch_size)

    def y_train(self) -> Tensor:
        return self.graph.y[self.split["train"]]

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[Any]:
        if self.mode == "full":
            yield from [self.split["train"]][start_step:]
            return
        order = epoch_order(self.split["train"], self.seed, epoch)
        for seeds in global_batches(order, self.batch_size)[start_step:]:
            local = shard(seeds, self.dist)
            yield local if local.numel() else None

    def _run(self, model: nn.Module, seeds: Tensor) -> tuple[Tensor, Tensor]:
        if self.mode == "full":
            g = self.graph_on_device
            pred = model(g.x, g.edge_index, g.edge_attr, g.num_nodes)
            return pred[seeds.to(self.device)], g.y[seeds.to(self.device)]
        # The sampled neighbourhood of ``seeds``; its first ``len(seeds)`` nodes are the seeds.
        sub = self.sampler(seeds).to(self.device)
        pred = model(sub.x, sub.edge_index, sub.edge_attr, sub.num_nodes)
        return pred[: seeds.numel()], sub.y[: seeds.numel()]

    def forward(self, model: nn.Module, seeds: Tensor | None) -> tuple[Tensor, Tensor, float]:
        if seeds is None:
            pred, y = self._run(model, self.split["train"][:1])
            return pred, y, 0.0
        pred, y = self._run(model, seeds)
        return pred, y, 1.0

    def batch_size_of(self, seeds: Tensor | None) -> int:
        return 0 if seeds is None else seeds.numel()

    @torch.no_grad()
    def predict(
        self, model: nn.Module, splits: tuple[str, ...]
    ) -> dict[str, tuple[Tensor, Tensor]]:
        if self.mode == "full":
            g = self.graph_on_device
            pred = model(g.x, g.edge_index, g.edge_attr, g.num_nodes).float().cpu()
            return {s: (self.graph.y[self.split[s]], pred[self.split[s]]) for s in splits}
        out = {}
        for split in splits:
            ys, preds = [], []
            for seeds in shard(self.split[split], self.dist).split(self.eval_batch_size):
                pred, y = self._run(model, seeds)
                ys.append(y.cpu())
                preds.append(pred.float().cpu())
            out[split] = (_gather_in_order(ys), _gather_in_order(preds))
        return out

    def describe(self) -> str:
        return (
            f"{self.graph.num_nodes} nodes, {self.graph.num_edges} edges, "
            f"{self.split_sizes()}, {self.mode} batches"
        )
