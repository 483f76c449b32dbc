"""Node property prediction: a synthetic graph in OGB's raw ogbn layout, through ogb's loader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch_geometric.typing

from pyg_mup.data import load_dataset, marker
from pyg_mup.train import ConfigError, TrainConfig, read_metrics, train

NUM_NODES, NUM_EDGES, NUM_FEATURES, NUM_CLASSES = 300, 1500, 128, 40


def write_csv(path: Path, rows: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, header=False, index=False, compression="gzip")


def synthetic_arxiv(root: Path) -> Path:
    """``root/ogbn_arxiv`` as OGB lays it out: raw CSVs (edges, features, labels, years) and a
    time split. Labels follow the features, so a model can learn them."""
    rng = np.random.default_rng(0)
    folder = root / "ogbn_arxiv"
    src = rng.integers(0, NUM_NODES, NUM_EDGES)
    dst = (src + rng.integers(1, NUM_NODES, NUM_EDGES)) % NUM_NODES
    features = rng.normal(size=(NUM_NODES, NUM_FEATURES)).astype(np.float32)
    labels = features[:, :NUM_CLASSES].argmax(1)[:, None]
    write_csv(folder / "raw" / "edge.csv.gz", np.stack([src, dst], 1))
    write_csv(folder / "raw" / "node-feat.csv.gz", features)
    write_csv(folder / "raw" / "node-label.csv.gz", labels)
    write_csv(folder / "raw" / "node_year.csv.gz", rng.integers(2000, 2020, (NUM_NODES, 1)))
    write_csv(folder / "raw" / "num-node-list.csv.gz", np.array([[NUM_NODES]]))
    write_csv(folder / "raw" / "num-edge-list.csv.gz", np.array([[NUM_EDGES]]))
    order = rng.permutation(NUM_NODES)
    for name, part in zip(("train", "valid", "test"), np.split(order, [200, 250]), strict=True):
        write_csv(folder / "split" / "time" / f"{name}.csv.gz", np.sort(part)[:, None])
    (folder / marker("ogbn-arxiv")).write_text("synthetic test graph\n")
    return root


def test_synthetic_ogbn_loads_through_ogb(tmp_path):
    loaded = load_dataset("ogbn-arxiv", synthetic_arxiv(tmp_path))
    graph = loaded.dataset[0]
    assert graph.num_nodes == NUM_NODES and graph.edge_index.size(1) == NUM_EDGES
    assert graph.x.shape == (NUM_NODES, NUM_FEATURES) and graph.y.dtype == torch.long
    assert [loaded.split_idx[k].numel() for k in ("train", "valid", "test")] == [200, 50, 50]
    assert loaded.task.metric == "acc" and loaded.task.out_channels == NUM_CLASSES


def test_full_graph_node_training(tmp_path):
    root = synthetic_arxiv(tmp_path)
    summary = train(
        TrainConfig(
            dataset="ogbn-arxiv",
            root=str(root),
            out=str(tmp_path / "run"),
            epochs=3,
            width=32,
            layers=2,
            heads=4,
            lr=3e-3,
            warmup_steps=1,
            progress=False,
        )
    )
    assert summary["metric"] == "acc" and summary["epochs_completed"] == 3
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(math.isfinite(r["valid"]) and 0 <= r["test"] <= 1 for r in records)
    assert records[-1]["train_loss"] < records[0]["train_loss"]


@pytest.mark.skipif(
    torch_geometric.typing.WITH_PYG_LIB or torch_geometric.typing.WITH_TORCH_SPARSE,
    reason="neighbour sampling is available here",
)
def test_neighbour_sampling_without_its_backend_says_what_to_install(tmp_path):
    config = TrainConfig(
        dataset="ogbn-arxiv",
        root=str(synthetic_arxiv(tmp_path)),
        out=str(tmp_path / "run"),
        node_batching="sampled",
        progress=False,
    )
    with pytest.raises(ConfigError, match="needs pyg-lib or torch-sparse"):
        train(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("setting", "value"),
    [("virtual_node", True), ("attention", "both"), ("pe", ("rwse:8",)), ("model", "gine")],
)
def test_graph_level_settings_are_refused_for_node_datasets(setting, value):
    """The NodeTransformer has none of these: a run must not train without them silently."""
    flag = setting.replace("_", "-")
    with pytest.raises(ConfigError, match=f"--{flag} is for graph-level datasets: ogbn-arxiv"):
        TrainConfig(dataset="ogbn-arxiv", **{setting: value}).validate()
    TrainConfig(dataset="ogbn-arxiv").validate()
