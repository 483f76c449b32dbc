"""The lowest training loss a model that sees graphs only up to Weisfeiler-Lehman colour
refinement could reach: is a flat training loss the data's floor or the optimiser's?

Why: the width sweeps on the small OGB sets end at the same training loss at every width. If
that loss were the floor set by training graphs that a message-passing model cannot tell apart
(same WL colours, different labels), no width could go lower. This groups the training split
by a WL hash of the graphs with their node and edge features (``--iterations`` rounds: a model
with that many message-passing layers cannot separate graphs of one group) and reports the
loss of predicting each group's mean label: for regression the MSE on targets standardised as
``pyg-mup train`` standardises them, for binary tasks the binary cross-entropy.

    python benchmarks/label_floor.py --root ../shared/data --dataset ogbg-molfreesolv \\
        --iterations 2
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import networkx as nx
import torch
from torch import Tensor
from torch_geometric.data import Data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pyg_mup.data import load_dataset, task_of  # noqa: E402


def wl_hash(graph: Data, iterations: int) -> str:
    """A hash equal for graphs that ``iterations`` rounds of WL refinement, started from the
    node features and reading the edge features, cannot tell apart."""
    g = nx.Graph()
    for node, features in enumerate(graph.x.tolist()):
        g.add_node(node, f=str(features))
    for (src, dst), features in zip(
        graph.edge_index.t().tolist(), graph.edge_attr.tolist(), strict=True
    ):
        g.add_edge(src, dst, f=str(features))
    return nx.weisfeiler_lehman_graph_hash(g, node_attr="f", edge_attr="f", iterations=iterations)


def floor_loss(groups: list[Tensor], regression: bool) -> float:
    """Mean loss over labelled entries of predicting each group's per-task mean label."""
    labels = torch.cat(groups)
    labelled = ~labels.isnan()
    if regression:  # divided by the split's std, as the training loss standardises targets
        std = torch.stack(
            [labels[labelled[:, t], t].std(correction=0) for t in range(labels.size(1))]
        )
    total, count = 0.0, 0
    for group in groups:
        seen = ~group.isnan()
        fit = group.nan_to_num().sum(0) / seen.sum(0).clamp(min=1)
        if regression:
            loss = ((group - fit) / std) ** 2
        else:
            p = fit.clamp(1e-7, 1 - 1e-7).expand_as(group)
            loss = -(group * p.log() + (1 - group) * (1 - p).log())
        total += loss[seen].sum().item()
        count += int(seen.sum())
    return total / count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ogbg-molesol")
    parser.add_argument("--root", type=Path, help="folder holding the dataset in OGB's layout")
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--iterations", type=int, default=2, help="WL rounds (≈ layers)")
    args = parser.parse_args(argv)
    data = load_dataset(args.dataset, args.root, args.cache_dir)
    train = data.split_idx["train"].tolist()
    groups: dict[str, list[Tensor]] = defaultdict(list)
    for i in train:
        graph = data.dataset[i]
        groups[wl_hash(graph, args.iterations)].append(graph.y.view(1, -1).float())
    shared = [g for g in groups.values() if len(g) > 1]
    regression = task_of(args.dataset).is_regression
    loss = floor_loss([torch.cat(g) for g in groups.values()], regression)
    print(
        f"{args.dataset}, {args.iterations} WL rounds: {len(train)} training graphs in "
        f"{len(groups)} classes ({sum(map(len, shared))} graphs share {len(shared)} classes); "
        f"floor of the training loss ({'standardised MSE' if regression else 'BCE'}): {loss:.4f}"
    )


if __name__ == "__main__":
    main()
