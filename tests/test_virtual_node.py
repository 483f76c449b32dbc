"""The GraphTransformer's virtual node: it carries graph size, needs no batch vector for one
graph, keeps the GINE baseline's parameter names, and its MLPs follow μP's hidden rules (a flat
coord check). Batch independence: ``test_models.py``; depth rules: ``test_depth.py``."""

from __future__ import annotations

import torch
from graphs import molecule, predict
from torch_geometric.data import Batch, Data

from pyg_mup import mup
from pyg_mup.data import load_dataset
from pyg_mup.models import GraphTransformer


def twice(graph: Data) -> Data:
    """Two disjoint copies of ``graph`` as one graph: every node sees what it saw before."""
    n = graph.num_nodes
    return Data(
        x=graph.x.repeat(2, 1),
        edge_index=torch.cat([graph.edge_index, graph.edge_index + n], 1),
        edge_attr=graph.edge_attr.repeat(2, 1),
        num_nodes=2 * n,
    )


def transformer(virtual_node: bool, **kwargs) -> GraphTransformer:
    torch.manual_seed(0)
    model = GraphTransformer(
        2, width=16, layers=3, heads=2, local_branch="gine", virtual_node=virtual_node, **kwargs
    )
    mup.set_base_shapes(model, None)
    torch.nn.init.normal_(model.head.weight)
    return model.eval()


def test_the_virtual_node_lets_the_model_see_graph_size():
    """Local attention, a GINE branch and a mean pool give a graph and its doubled twin the same
    prediction; the virtual node's sum tells them apart."""
    graph = molecule(6, seed=0)
    pair = Batch.from_data_list([graph, twice(graph)])
    plain = predict(transformer(False, attention="local"), pair)
    torch.testing.assert_close(plain[0], plain[1])
    sized = predict(transformer(True, attention="local"), pair)
    assert (sized[0] - sized[1]).abs().max() > 1e-3


def test_a_single_graph_needs_no_batch_vector():
    model = transformer(True, attention="both")
    single = molecule(7, seed=9)
    without_batch = model(single.x, single.edge_index, single.edge_attr)
    torch.testing.assert_close(without_batch, predict(model, Batch.from_data_list([single])))


def test_state_dict_names_follow_the_gine_baseline():
    keys = {k.split(".")[0] for k in transformer(True).state_dict()}
    assert {"virtual_start", "virtual_mlps"} <= keys
    assert not {"virtual_start", "virtual_mlps"} & {
        k.split(".")[0] for k in transformer(False).state_dict()
    }


def test_mup_shapes_and_coord_check():
    """μP: the virtual-node MLPs are hidden matrices; every module's activations keep their
    size from width 32 to 256 over 3 AdamW steps at lr 0.01 (measured 256/32 ratios under μP
    0.77–1.44; under SP the head grows 8.5× and the second virtual-node MLP's first matrix 5.3×
    by step 2)."""

    def build(width: int) -> GraphTransformer:
        return GraphTransformer(
            1, width=width, layers=3, heads=4, local_branch="gine", virtual_node=True
        )

    model = mup.build_mup_model(build, 256, 32)
    hidden = {n for n, i in mup.width_infos(model).items() if i.ninf == 2}
    assert {f"virtual_mlps.{layer}.{i}.weight" for layer in (0, 1) for i in (0, 3)} <= hidden

    data = load_dataset("ogbg-molesol")
    batch = Batch.from_data_list([data.dataset[int(i)] for i in data.split_idx["train"][:64]])

    def loss(m, _):
        return torch.nn.functional.mse_loss(predict(m, batch), batch.y)

    def ratios(use_mup):
        records = mup.coord_check(
            build, [32, 256], None, optimizer="adamw", steps=3, lr=0.01, mup=use_mup, loss_fn=loss
        )
        rms = {(r["module"], r["step"], r["width"]): r["rms"] for r in records}
        return {(m, t): rms[(m, t, 256)] / v for (m, t, w), v in rms.items() if w == 32 and v}

    mu = ratios(True)
    assert any(module.startswith("virtual_mlps") for module, _ in mu)
    for (module, step), ratio in mu.items():
        if (module, step) == ("head", 0):
            continue  # zero-initialised readout: nothing to compare at step 0
        assert 0.5 < ratio < 2.0, (module, step, ratio)
    sp = ratios(False)
    assert min(sp[("head", 1)], sp[("head", 2)]) > 2.0, sp
    assert sp[("virtual_mlps.1.0", 2)] > 2.0, sp
