"""LocalBranch: shapes, edge features, dropout, μP shapes, and a flat coord check under μP."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import ResGatedGraphConv, global_mean_pool

from pyg_mup import mup
from pyg_mup.models.encodings import NodeEncodings, encoding_transform
from pyg_mup.models.local_branch import LocalBranch

IN, EDGE_DIM, OUT = 6, 3, 2
SPECS = ("rwse:4", "lap:3", "degree")


def graph_batch(sizes=(7, 9, 5, 8), seed: int = 0) -> tuple[Batch, torch.Tensor]:
    """Random undirected graphs with float node/edge features, encodings, and graph targets."""
    g = torch.Generator().manual_seed(seed)
    transform = encoding_transform(SPECS)
    graphs = []
    for n in sizes:
        pairs = torch.randint(0, n, (2, 2 * n), generator=g)
        edge_index = torch.cat([pairs, pairs.flip(0)], 1)
        edge_attr = torch.randn(2 * n, EDGE_DIM, generator=g).repeat(2, 1)
        x = torch.randn(n, IN, generator=g)
        graphs.append(transform(Data(x=x, edge_index=edge_index, edge_attr=edge_attr)))
    return Batch.from_data_list(graphs), torch.randn(len(sizes), OUT, generator=g)


@pytest.mark.parametrize("kind", ["gine", "gated"])
@pytest.mark.parametrize("edge_dim", [None, EDGE_DIM])
def test_shapes_and_gradients(kind, edge_dim):
    torch.manual_seed(0)
    batch, _ = graph_batch()
    branch = LocalBranch(kind, 16, edge_dim)
    h = torch.randn(batch.num_nodes, 16, requires_grad=True)
    edge_attr = batch.edge_attr if edge_dim else None
    out = branch(h, batch.edge_index, edge_attr)
    assert out.shape == (batch.num_nodes, 16)
    out.square().sum().backward()
    assert h.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.parameters())
    if edge_dim:  # the edge features reach the output
        assert not torch.allclose(branch(h, batch.edge_index, edge_attr + 1), out)
    assert f"kind={kind!r}, width=16, edge_dim={edge_dim}" in repr(branch)


def test_errors():
    with pytest.raises(ValueError, match=r"kind must be one of \('gine', 'gated'\), got 'gat'"):
        LocalBranch("gat", 8)
    h, edge_index = torch.randn(3, 8), torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match=r"edge_attr is None but the branch has edge_dim=3"):
        LocalBranch("gine", 8, 3)(h, edge_index)
    with pytest.raises(ValueError, match=r"edge_attr is \[E, 3\] but .* edge_dim=None"):
        LocalBranch("gated", 8)(h, edge_index, torch.randn(2, 3))


def test_dropout_only_in_training():
    torch.manual_seed(0)
    batch, _ = graph_batch()
    branch = LocalBranch("gine", 64, EDGE_DIM, dropout=0.5)
    h = torch.randn(batch.num_nodes, 64)
    args = (h, batch.edge_index, batch.edge_attr)
    branch.eval()
    full = branch(*args)
    assert torch.equal(branch(*args), full)
    branch.train()
    dropped = branch(*args)
    zero = dropped == 0
    assert 0.4 < zero.float().mean() < 0.6
    torch.testing.assert_close(dropped[~zero], 2 * full[~zero])


@pytest.mark.parametrize("kind", ["gine", "gated"])
def test_width_matrices_are_mup_hidden(kind):
    width, base = 256, 64
    model = mup.build_mup_model(lambda w: LocalBranch(kind, w, EDGE_DIM), width, base)
    infos = mup.width_infos(model)
    hidden = {n for n, i in infos.items() if i.ninf == 2}
    expected = {
        "gine": {"conv.nn.0.weight", "conv.nn.2.weight"},
        "gated": {f"conv.lin_{m}.weight" for m in ("key", "query", "value", "skip")},
    }[kind]
    assert hidden == expected
    for name in hidden:  # exactly width / base, also for the [width, 2 width] gated matrices
        assert infos[name].width_mult == width / base, name
    edge = "conv.lin.weight" if kind == "gine" else "edge_lin.weight"
    assert infos[edge].width_dims == {0}  # the edge map is an input layer
    lrs = {id(p): g["lr"] for g in mup.mup_param_groups(model, lr=1.0) for p in g["params"]}
    for name, p in model.named_parameters():
        assert lrs[id(p)] == (base / width if name in hidden else 1.0), name


def edge_influence(conv_of_width, width: int) -> float:
    """Relative change of a branch's output when the edge features are zeroed (at init)."""
    torch.manual_seed(0)
    batch, _ = graph_batch()
    branch = mup.build_mup_model(conv_of_width, width, 64)
    h = torch.randn(batch.num_nodes, width)
    out = branch(h, batch.edge_index, batch.edge_attr)
    without = branch(h, batch.edge_index, torch.zeros_like(batch.edge_attr))
    return ((out - without).norm() / out.norm()).item()


def test_gated_edge_features_keep_their_weight_as_width_grows():
    """Why 'gated' maps edges to width first: with edge_dim columns inside ResGatedGraphConv's
    [width, width + edge_dim] hidden matrices, their share of the output shrinks as width grows
    (measured at init, 1024/64: ours 1.08, PyG's edge_dim directly 0.27)."""

    def direct(width):
        return ResGatedGraphConv(width, width, edge_dim=EDGE_DIM)

    ours = edge_influence(lambda w: LocalBranch("gated", w, EDGE_DIM), 1024)
    ours /= edge_influence(lambda w: LocalBranch("gated", w, EDGE_DIM), 64)
    pyg = edge_influence(direct, 1024) / edge_influence(direct, 64)
    assert ours > 0.7 and pyg < 0.4, (ours, pyg)


class BranchNet(nn.Module):
    """Input layers (features + encodings) → 2 × (h ← LN(h + LocalBranch(h))) → mean → readout."""

    def __init__(self, width: int, kind: str):
        super().__init__()
        self.encoder = nn.Linear(IN, width)
        self.encodings = NodeEncodings(SPECS, width)
        self.branches = nn.ModuleList(LocalBranch(kind, width, EDGE_DIM) for _ in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(2))
        self.readout = mup.MuReadout(width, OUT)

    def forward(self, x, edge_index, edge_attr, batch, rwse, lap_pe):
        encodings = {"rwse": rwse, "lap_pe": lap_pe}
        h = self.encoder(x) + self.encodings(encodings, edge_index, x.size(0), batch)
        for branch, norm in zip(self.branches, self.norms, strict=True):
            h = norm(h + branch(h, edge_index, edge_attr))
        return self.readout(global_mean_pool(h, batch, size=4))


def width_ratios(records) -> dict[tuple[str, int], float]:
    """``{(module, step): rms at width 1024 / rms at width 64}``."""
    rms = {(r["module"], r["step"], r["width"]): r["rms"] for r in records}
    return {(m, t): rms[(m, t, 1024)] / rms[(m, t, 64)] for m, t, w in rms if w == 64}


@pytest.mark.parametrize("kind", ["gine", "gated"])
def test_coord_check_is_flat_under_mup(kind):
    """μP: every module's activation RMS at width 1024 is within 0.5–2× of width 64's over 4
    AdamW steps at lr 0.005; SP: the branches grow (measured 1024/64 ratios at steps 1–3: gine
    14–71, gated 5.6–15; μP's branches 0.81–1.0, every μP module 0.81–1.42)."""
    batch, target = graph_batch()
    inputs = (batch.x, batch.edge_index, batch.edge_attr, batch.batch, batch.rwse, batch.lap_pe)

    def run(use_mup, seeds):
        records = mup.coord_check(
            lambda w: BranchNet(w, kind),
            [64, 1024],
            (inputs, target),
            optimizer="adamw",
            steps=4,
            lr=0.005,
            mup=use_mup,
            seeds=seeds,
        )
        return width_ratios(records)

    mu = run(True, seeds=(0, 1))
    assert {m for m, _ in mu} >= {"encodings", "branches.0", "branches.1", "readout"}
    for (module, step), ratio in mu.items():
        if module == "readout" and step == 0:
            assert ratio < 1.0  # μP's readout starts at Θ(1/sqrt(width)) by design
        else:
            assert 0.5 < ratio < 2.0, (module, step, ratio)
    sp = run(False, seeds=(0,))
    for module in ("branches.0", "branches.1"):
        assert min(sp[(module, step)] for step in (1, 2, 3)) > 4.0, module
