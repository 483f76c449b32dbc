"""Depth rules (depth-μP, CompleteP) and the trainer options that act on the built model
(--depth-parametrization, --zero-query)."""

from __future__ import annotations

import pytest
import torch
from graphs import predict
from torch import nn
from torch_geometric.data import Batch

from pyg_mup import mup
from pyg_mup.data import load_dataset
from pyg_mup.train.config import TrainConfig
from pyg_mup.train.factory import make_model, make_optimizer


def test_completep_multiplier_lr_and_eps_follow_table_1():
    # m_L = L / L_base = 4: branch × m_L^-α, in-branch Adam lr × m_L^(α-1), ε × m_N^-1 m_L^-α.
    assert mup.depth_multiplier(8, 2, alpha=1.0) == 0.25
    assert mup.depth_multiplier(8, 2) == 0.5  # depth-μP (α = 1/2) is the default
    block = nn.Linear(4, 4)
    mup.mark_residual_branch(block, 8, 2, alpha=1.0)
    assert mup.depth.depth_lr_factor(block.weight, "adam") == 1.0
    mup.mark_residual_branch(block, 8, 2, alpha=0.5)
    assert mup.depth.depth_lr_factor(block.weight, "adam") == 0.5
    assert mup.depth.depth_lr_factor(block.weight, "sgd") == 1.0
    assert mup.adam_eps(1e-8, width_mult=2.0, depth_mult=4.0, alpha=1.0) == pytest.approx(1.25e-9)
    with pytest.raises(ValueError, match="alpha must be in"):
        mup.depth_multiplier(4, 2, alpha=2.0)


def test_scale_residual_branch_multiplies_the_output():
    branch = nn.Linear(3, 3)
    x = torch.randn(2, 3)
    plain = branch(x)
    handle = mup.scale_residual_branch(branch, 0.25)
    assert torch.allclose(branch(x), 0.25 * plain)
    handle.remove()
    assert torch.equal(branch(x), plain)


@pytest.fixture(scope="module")
def molesol():
    data = load_dataset("ogbg-molesol")
    return data.task, data.dataset[0]


def small(**overrides) -> TrainConfig:
    return TrainConfig(**{"width": 16, "layers": 4, "heads": 2, "base_width": 16, **overrides})


@pytest.mark.parametrize(
    ("name", "lr_factor", "multiplier"), [("depth-mup", 0.5, 0.5), ("completep", 1.0, 0.25)]
)
def test_depth_parametrization_scales_every_blocks_branches(molesol, name, lr_factor, multiplier):
    task, example = molesol
    config = small(depth_parametrization=name, base_layers=1)
    torch.manual_seed(0)
    model = make_model(config, task, example)
    torch.manual_seed(0)
    plain = make_model(small(), task, example)
    for block, twin in zip(model.blocks, plain.blocks, strict=True):
        h = torch.randn(5, 16)
        assert torch.allclose(block.ffn(h), multiplier * twin.ffn(h), atol=1e-6)
        assert all(p.depth_mult == 4 for p in block.parameters())
    optimizer = make_optimizer(config, model)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    ffn_in = model.blocks[0].ffn[0]  # width → 2·width: a hidden matrix, width factor 1 here
    assert lrs[id(ffn_in.weight)] == pytest.approx(config.lr * lr_factor)
    assert lrs[id(model.node_encoder.parameters().__next__())] == pytest.approx(config.lr)
    alpha = mup.ALPHAS[name]
    assert optimizer.param_groups[0]["eps"] == pytest.approx(1e-8 * 4**-alpha)


def test_depth_parametrization_scales_the_local_branch_and_the_virtual_node(molesol):
    """The hybrid's message-passing branch and the virtual node's updates are residual branches
    too: scaled and marked like the attention and the FFN."""
    task, example = molesol
    extras = {"local_branch": "gine", "virtual_node": True}
    config = small(depth_parametrization="completep", base_layers=1, **extras)
    torch.manual_seed(0)
    model = make_model(config, task, example)
    torch.manual_seed(0)
    plain = make_model(small(**extras), task, example)
    h, edge_index = torch.randn(5, 16), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    edge_attr = torch.randn(4, model.blocks[0].local_branch.edge_dim)
    branch, twin = model.blocks[0].local_branch, plain.blocks[0].local_branch
    scaled = branch(h, edge_index, edge_attr)
    assert torch.allclose(scaled, 0.25 * twin(h, edge_index, edge_attr), atol=1e-6)
    assert len(model.virtual_mlps) == 3
    for update, twin in zip(model.virtual_mlps, plain.virtual_mlps, strict=True):
        update.eval(), twin.eval()
        assert torch.allclose(update(h), 0.25 * twin(h), atol=1e-6)
        assert all(p.depth_mult == 4 for p in update.parameters())


@pytest.mark.parametrize("virtual_node", [False, True])
def test_completep_keeps_the_hybrids_residual_stream_flat_in_depth(virtual_node):
    """RMS of the residual stream after the last block, 64 molecules, training mode, depths 2
    and 16 (base 2). Measured 16/2 ratios: CompleteP 0.74 (0.85 with the virtual node); no depth
    rule 2.7 (43); CompleteP with the GINE branch left unscaled 1.9, with the virtual node's
    message left unscaled 5.2."""
    data = load_dataset("ogbg-molesol")
    batch = Batch.from_data_list([data.dataset[i] for i in range(64)])

    def stream_rms(layers: int, parametrization: str) -> float:
        config = TrainConfig(
            width=32,
            base_width=32,
            heads=4,
            layers=layers,
            base_layers=2,
            depth_parametrization=parametrization,
            local_branch="gine",
            virtual_node=virtual_node,
        )
        torch.manual_seed(0)
        model = make_model(config, data.task, data.dataset[0])
        stream = []
        model.blocks[-1].register_forward_hook(lambda _m, _i, out: stream.append(out))
        with torch.no_grad():
            predict(model, batch)
        return stream[0].pow(2).mean().sqrt().item()

    assert stream_rms(16, "completep") / stream_rms(2, "completep") < 1.2
    assert stream_rms(16, "none") / stream_rms(2, "none") > 2.0


@pytest.mark.parametrize(
    ("overrides", "eps"),
    [
        ({"width": 64}, 1e-8 / 4),  # μP: ε shrinks with the width multiplier
        ({"width": 64, "depth_parametrization": "completep", "base_layers": 2}, 1e-8 / 4 / 2),
        ({"width": 64, "mup": False}, 1e-8),  # SP keeps torch's ε
        ({}, 1e-8),  # at the base width
    ],
)
def test_adam_eps_follows_completep_width_and_depth_rules(molesol, overrides, eps):
    task, example = molesol
    config = small(**overrides)
    optimizer = make_optimizer(config, make_model(config, task, example))
    eps_of_groups = [g["eps"] for g in optimizer.param_groups]
    assert eps_of_groups == pytest.approx([eps] * len(eps_of_groups))


def test_zero_query_zeroes_every_query_projection(molesol):
    task, example = molesol
    model = make_model(small(zero_query=True), task, example)
    queries = [m.lin_query for m in model.modules() if hasattr(m, "lin_query")]
    assert len(queries) >= 4
    assert all(p.abs().sum() == 0 for q in queries for p in q.parameters())
    other = make_model(small(), task, example)
    assert any(
        p.abs().sum() > 0
        for m in other.modules()
        if hasattr(m, "lin_query")
        for p in m.lin_query.parameters()
    )
