"""``benchmarks/graph_buckets.py``: the pad graph makes a batch's node and edge totals bucket
multiples without changing what the model predicts for the real graphs, and the script counts
an epoch's shape signatures as they come and padded."""

import json

import pytest
import torch
from graphs import predict
from torch_geometric.data import Batch

from pyg_mup.data import load_dataset
from pyg_mup.graph import AddHopDistance
from pyg_mup.models import GraphTransformer
from pyg_mup.mup import set_base_shapes


@pytest.fixture(scope="module")
def buckets(benchmark_script):
    return benchmark_script("graph_buckets")


@pytest.fixture
def graphs(tmp_path, monkeypatch):
    monkeypatch.setenv("PYG_MUP_CACHE", str(tmp_path / "cache"))
    data = load_dataset(pre_transform=AddHopDistance())  # the shipped ogbg-molesol
    return [data.dataset[i] for i in range(16)]


def test_the_pad_graph_fills_the_buckets_and_leaves_the_real_graphs_alone(buckets, graphs):
    out = buckets.padded(graphs, node_bucket=64, edge_bucket=128)
    assert len(out) == len(graphs) + 1 and all(a is b for a, b in zip(out, graphs, strict=False))
    assert sum(g.num_nodes for g in out) % 64 == 0 and sum(g.num_edges for g in out) % 128 == 0
    pad = out[-1]
    src, dst = pad.edge_index
    assert bool((src != dst).all()) and (src * pad.num_nodes + dst).unique().numel() == src.numel()
    assert bool(pad.y.isnan().all()) and pad.hop_distance.numel() == pad.num_nodes**2
    assert pad.x.dtype == graphs[0].x.dtype
    assert pad.edge_attr.shape[1:] == graphs[0].edge_attr.shape[1:]

    torch.manual_seed(0)
    model = GraphTransformer(1, width=16, layers=2, heads=2, attention="both")
    set_base_shapes(model, None)  # standard parametrization
    torch.nn.init.normal_(model.head.weight)  # zero-initialised readout: every output would be 0
    model.eval()

    with torch.no_grad():
        plain = predict(model, Batch.from_data_list(graphs))
        with_pad = predict(model, Batch.from_data_list(out))
    assert with_pad.shape[0] == plain.shape[0] + 1
    torch.testing.assert_close(with_pad[:-1], plain, rtol=1e-5, atol=1e-6)


def test_pad_edges_that_do_not_fit_among_the_pad_nodes_are_refused(buckets, graphs):
    with pytest.raises(ValueError, match="do not fit"):
        buckets.pad_graph(graphs[0], num_nodes=3, num_edges=7)


def test_signatures_are_counted_as_they_come_and_padded(buckets, graphs, tmp_path):
    out = tmp_path / "buckets.json"
    argv = ["--batch-size", "16", "--max-batches", "6", "--node-bucket", "64"]
    buckets.main([*argv, "--edge-bucket", "128", "--out", str(out)])
    records = json.loads(out.read_text())["records"]
    assert [(r["model"], r["padding"]) for r in records] == [
        ("ours-local", "none"), ("ours-local", "nodes+edges"),
        ("ours-both", "none"), ("ours-both", "nodes+edges"),
    ]  # fmt: skip
    for r in records:
        assert r["batches"] == 6 and 1 <= r["signatures"] <= 6
        assert r["batches_per_signature"] == pytest.approx(6 / r["signatures"])
    raw, pad = records[0], records[1]
    assert "batch.x" in raw["varying"] or raw["signatures"] == 1
    assert "batch.edge_index" not in pad["varying"] or pad["varying"]["batch.edge_index"] < 6
