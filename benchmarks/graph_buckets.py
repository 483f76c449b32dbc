"""How many CUDA graphs a training epoch would need: the distinct shape signatures of its
batches (every tensor of the batch and of its structures), as they come and padded to buckets.

Why: a captured CUDA graph replays fixed shapes and addresses. ``bench_train.py
--cuda-graph-steps`` measured the ceiling on one batch (the step 5× shorter on the H200); a
cache of graphs keyed by the batch's shapes pays only if an epoch's batches fall into a few
signatures. This counts them, on the CPU, for the structures the models read.

Padding appends one extra graph to each batch: the pad nodes, ``--edge-bucket``'s pad edges
among them (distinct pairs, no self-loops), zero features and a NaN label, which the loss skips
(OGB's convention for a missing label). The real graphs' outputs are unchanged: attention and
pooling stay within a graph. Nodes are padded to a multiple of ``--node-bucket`` and edges to a
multiple of ``--edge-bucket``; every padded batch has one more graph than it had.

The JSON holds, per model's structure spec and per padding, the number of batches, of distinct
signatures, and the tensors whose shapes still vary (what a bucketing of the structures
themselves would have to pad next).

    python benchmarks/graph_buckets.py --root ../shared/data --dataset ogbg-molhiv \\
        --out benchmarks/results/graph_buckets_molhiv.json
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import common  # noqa: E402
from pyg_mup.data import load_dataset  # noqa: E402
from pyg_mup.graph import AddHopDistance, StructureSpec  # noqa: E402

SPECS = {  # bench_train's models: what their collate builds on CUDA
    "ours-local": StructureSpec(modes=("local",), target="cuda"),
    "ours-both": StructureSpec(modes=("local", "global"), max_distance=5, target="cuda"),
}


def round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def pad_graph(example: Data, num_nodes: int, num_edges: int) -> Data:
    """A graph of ``num_nodes`` nodes and ``num_edges`` distinct directed edges (no self-loops)
    with ``example``'s feature widths and dtypes, zero features and a NaN label."""
    if num_edges > num_nodes * (num_nodes - 1):
        raise ValueError(f"{num_edges} distinct edges do not fit among {num_nodes} nodes")
    src = torch.arange(num_nodes).repeat_interleave(num_nodes)
    dst = torch.arange(num_nodes).repeat(num_nodes)
    keep = src != dst
    edge_index = torch.stack([src[keep], dst[keep]])[:, :num_edges]
    pad = Data(
        x=example.x.new_zeros(num_nodes, *example.x.shape[1:]),
        edge_index=edge_index,
        edge_attr=example.edge_attr.new_zeros(num_edges, *example.edge_attr.shape[1:]),
        y=torch.full_like(example.y, math.nan, dtype=torch.float),
        num_nodes=num_nodes,
    )
    return AddHopDistance()(pad) if "hop_distance" in example else pad


def padded(graphs: list[Data], node_bucket: int, edge_bucket: int) -> list[Data]:
    """``graphs`` and one pad graph making the node and edge totals multiples of the buckets
    (at least one pad node; more nodes where the pad edges would not fit)."""
    nodes = sum(g.num_nodes for g in graphs)
    edges = sum(g.num_edges for g in graphs)
    pad_edges = round_up(edges, edge_bucket) - edges
    total = round_up(nodes + 1, node_bucket)
    while (total - nodes) * (total - nodes - 1) < pad_edges:
        total += node_bucket
    return [*graphs, pad_graph(graphs[0], total - nodes, pad_edges)]


def shapes(value: object, prefix: str = "", seen: set[int] | None = None) -> dict[str, tuple]:
    """``{path: shape}`` of every tensor reachable from ``value`` (attributes, dataclass fields,
    dicts, sequences), in a fixed order: the tensors a captured graph would read."""
    seen = set() if seen is None else seen
    if id(value) in seen or isinstance(value, (int, float, str, bool, type(None))):
        return {}
    seen.add(id(value))
    if isinstance(value, Tensor):
        return {prefix: (tuple(value.shape), str(value.dtype))}
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    elif dataclasses.is_dataclass(value) and not hasattr(value, "__dict__"):
        items = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
    elif hasattr(value, "__dict__"):
        items = ((k, v) for k, v in vars(value).items() if not callable(v))
    else:
        return {}
    found: dict[str, tuple] = {}
    for key, item in items:
        found.update(shapes(item, f"{prefix}.{key}" if prefix else str(key), seen))
    return found


def count(batches: list[list[Data]], spec: StructureSpec) -> dict:
    """Distinct signatures of ``batches`` (the PyG batch and ``spec``'s structures)."""
    signatures: Counter = Counter()
    varying: dict[str, set] = {}
    for graphs in batches:
        batch = Batch.from_data_list(graphs)
        structures = spec.build_batch(batch)
        # the structures consume the stored hop distances in the collate; the step reads
        # neither them nor anything of their size
        batch_tensors = {k: v for k, v in batch.to_dict().items() if k != "hop_distance"}
        found = shapes({"batch": batch_tensors, "structures": structures})
        signatures[tuple(sorted(found.items()))] += 1
        for path, shape in found.items():
            varying.setdefault(path, set()).add(shape)
    return dict(
        batches=len(batches),
        signatures=len(signatures),
        batches_per_signature=len(batches) / max(len(signatures), 1),
        varying={path: len(s) for path, s in sorted(varying.items()) if len(s) > 1},
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--dataset", default="ogbg-molesol", help="an ogbg-mol* dataset (default: shipped)")
    add("--root", type=Path, help="folder holding the dataset in OGB's layout")
    add("--cache-dir", type=Path)
    add("--batch-size", type=int, default=128)
    add("--node-bucket", type=int, default=256, help="pad node totals to a multiple of it")
    add("--edge-bucket", type=int, default=512, help="pad edge totals to a multiple of it")
    add("--max-batches", type=int, help="the first N batches of the shuffled split only")
    add("--seed", type=int, default=0)
    add("--out", type=Path, default=ROOT / "benchmarks/results/graph_buckets.json")
    args = parser.parse_args(argv)
    data = load_dataset(args.dataset, args.root, args.cache_dir, pre_transform=AddHopDistance())
    train = data.split_idx["train"]
    order = train[torch.randperm(train.numel(), generator=torch.Generator().manual_seed(args.seed))]
    full = order.numel() // args.batch_size * args.batch_size  # same graph count every batch
    chunks = order[:full].split(args.batch_size)[: args.max_batches]
    raw = [[data.dataset[int(i)] for i in chunk] for chunk in chunks]
    pads = [padded(graphs, args.node_bucket, args.edge_bucket) for graphs in raw]
    records = [
        dict(model=name, padding=padding, **count(batches, spec))
        for name, spec in SPECS.items()
        for padding, batches in (("none", raw), ("nodes+edges", pads))
    ]
    env = common.environment(
        torch.device("cpu"), dataset=args.dataset, batch_size=args.batch_size,
        node_bucket=args.node_bucket, edge_bucket=args.edge_bucket, seed=args.seed,
    )  # fmt: skip
    common.write_json(args.out, dict(environment=env, records=records))
    rows = [
        [r["model"], r["padding"], str(r["batches"]), str(r["signatures"]),
         ", ".join(f"{k} ({n})" for k, n in r["varying"].items())]
        for r in records
    ]  # fmt: skip
    print(common.table(["model", "padding", "batches:", "signatures:", "shapes that vary"], rows))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
