"""GraphTransformer / NodeTransformer: shapes, one structure per batch, batching, μP and SP."""

from __future__ import annotations

import pytest
import torch
from graphs import molecule, predict
from torch_geometric.data import Batch

from pyg_mup.graph import GraphStructure
from pyg_mup.models import GraphTransformer, NodeTransformer, feature_specs
from pyg_mup.mup import MuAdamW, build_mup_model, set_base_shapes, width_infos


def batch_of(sizes: list[int]) -> Batch:
    return Batch.from_data_list([molecule(n, i) for i, n in enumerate(sizes)])


def sp(model: torch.nn.Module) -> torch.nn.Module:
    return set_base_shapes(model, None)


@pytest.mark.parametrize("attention", ["local", "global", "both"])
def test_graph_transformer_shapes_and_gradients(attention):
    torch.manual_seed(0)
    model = sp(GraphTransformer(3, width=16, layers=2, heads=2, attention=attention))
    torch.nn.init.normal_(model.head.weight)
    out = predict(model, batch_of([5, 7, 4]))
    assert out.shape == (3, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("attention", ["local", "global", "both"])
def test_structure_is_built_once_per_batch(attention, monkeypatch):
    calls = []
    build = GraphStructure.build

    def counting(*args, **kwargs):
        calls.append(kwargs.get("mode"))
        return build(*args, **kwargs)

    monkeypatch.setattr(GraphStructure, "build", staticmethod(counting))
    model = sp(GraphTransformer(1, width=16, layers=3, heads=2, attention=attention))
    predict(model, batch_of([4, 6]))
    expected = ["local", "global"] if attention == "both" else [attention]
    assert sorted(calls) == sorted(expected)


@pytest.mark.parametrize("virtual_node", [False, True])
@pytest.mark.parametrize("attention", ["local", "both"])
def test_a_graphs_prediction_does_not_depend_on_its_batch(attention, virtual_node):
    """What data parallelism relies on: per-graph outputs are independent of batch-mates (the
    virtual node sums within each graph)."""
    torch.manual_seed(0)
    model = GraphTransformer(
        2, width=16, layers=2, heads=2, attention=attention, virtual_node=virtual_node
    )
    model = sp(model)
    torch.nn.init.normal_(model.head.weight)
    model.eval()
    graphs = [molecule(n, i) for i, n in enumerate([5, 8, 3, 6])]
    together = predict(model, Batch.from_data_list(graphs))
    alone = torch.cat([predict(model, Batch.from_data_list([g])) for g in graphs])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_width_must_split_into_heads():
    with pytest.raises(ValueError, match="not divisible by heads"):
        GraphTransformer(1, width=30, heads=4)


def test_mup_model_has_width_info_and_sp_twin_matches_at_base_width():
    def make(width: int) -> GraphTransformer:
        return GraphTransformer(1, width=width, layers=2, heads=2, attention="both")

    torch.manual_seed(0)
    mup_model = build_mup_model(make, 32, 32, delta_width=64)
    torch.manual_seed(0)
    sp_model = sp(make(32))
    infos = width_infos(mup_model)
    assert infos["blocks.0.ffn.0.weight"].width_dims == frozenset({0, 1})
    assert infos["head.weight"].width_dims == frozenset({1})
    assert infos["edge_encoder.encoder.bond_embedding_list.0.weight"].width_dims == frozenset()
    for (name, a), b in zip(mup_model.named_parameters(), sp_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    b = batch_of([4, 5])
    torch.testing.assert_close(predict(mup_model, b), predict(sp_model, b))
    MuAdamW(mup_model, lr=1e-3)  # every parameter has μP groups


def test_embeddings_init_does_not_shrink_with_width():
    narrow = GraphTransformer(1, width=32, heads=2).node_encoder(batch_of([30]).x)
    wide = GraphTransformer(1, width=512, heads=2).node_encoder(batch_of([30]).x)
    assert 0.7 < narrow.std().item() < 1.3 and 0.7 < wide.std().item() < 1.3


def test_feature_specs():
    mol = molecule(4, 0)
    assert feature_specs("ogbg-molhiv", mol.x, mol.edge_attr) == ("atom", "bond")
    assert feature_specs("ogbg-ppa", None, torch.zeros(5, 7)) == (None, 7)
    assert feature_specs("ogbn-arxiv", torch.zeros(3, 128), None) == (128, None)


def test_graph_transformer_without_node_features_and_float_edges():
    b = batch_of([4, 5])
    model = sp(
        GraphTransformer(
            37, width=16, layers=1, heads=2, node_features=None, edge_features=7, attention="both"
        )
    )
    out = model(None, b.edge_index, torch.rand(b.num_edges, 7), b.batch, 2, b.num_nodes)
    assert out.shape == (2, 37)


def test_node_transformer_shapes():
    g = molecule(10, 0)
    model = sp(NodeTransformer(5, width=16, layers=2, heads=2, node_features=9, edge_features=3))
    out = model(g.x.float(), g.edge_index, g.edge_attr.float())
    assert out.shape == (10, 5)
    featureless = sp(NodeTransformer(2, width=16, layers=1, heads=2))
    assert featureless(None, g.edge_index, num_nodes=10).shape == (10, 2)


@pytest.mark.parametrize("model", ["transformer", "gine"])
def test_output_mult_setting_scales_the_prediction_under_mup(model):
    # --output-mult is μP's α_output: the factory hands it to the readout of every model, where
    # it multiplies the readout's input (so with the bias at zero, the prediction).
    from pyg_mup.data import task_of
    from pyg_mup.train import TrainConfig
    from pyg_mup.train.factory import model_builder

    task = task_of("ogbg-molesol")
    b = batch_of([4, 5, 6])
    preds = []
    for mult in (1.0, 3.0):
        config = TrainConfig(model=model, layers=1, heads=2, output_mult=mult)
        torch.manual_seed(0)
        net = build_mup_model(model_builder(config, task, molecule(4, 0)), 32, 16).eval()
        torch.nn.init.normal_(net.head.weight, generator=torch.Generator().manual_seed(1))
        torch.nn.init.zeros_(net.head.bias)
        assert net.head.output_mult == mult
        preds.append(predict(net, b))
    torch.testing.assert_close(preds[1], 3 * preds[0])
