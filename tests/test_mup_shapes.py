"""Base shapes, errors, wrappers (DDP prefix, torch.compile), base-shape files, depth-μP and
weight decay of pyg_mup.mup on plain torch models."""

import copy
import math

import pytest
import torch
from torch import nn

from pyg_mup import mup


def mlp(width: int, depth_mult: float | None = None) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(5, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), mup.MuReadout(width, 3)
    )


def lrs(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}


def test_width_info():
    model = mup.build_mup_model(mlp, 256, 32)
    hidden = model[2].weight.width_info
    assert hidden.width_dims == {0, 1} and hidden.width_mult == 8 and hidden.base_shape == (32, 32)
    assert model[0].weight.width_info.width_dims == {0}
    assert model[0].bias.width_info.fan_out_mult == 8
    out = model[4].weight.width_info
    assert out.width_dims == {1} and out.fan_in_mult == 8 and model[4].width_mult == 8.0
    assert model[4].bias.width_info.ninf == 0


def test_rescale_biases_and_readout():
    torch.manual_seed(0)
    sp = mup.set_base_shapes(mlp(512), None)
    torch.manual_seed(0)
    mu = mup.build_mup_model(mlp, 512, 32)
    factor = math.sqrt(512 / 32)
    torch.testing.assert_close(mu[2].weight, sp[2].weight)  # hidden: already 1/sqrt(fan_in)
    torch.testing.assert_close(mu[0].weight, sp[0].weight)  # input: fan_in fixed
    torch.testing.assert_close(mu[0].bias, sp[0].bias)
    torch.testing.assert_close(mu[2].bias, sp[2].bias * factor)
    torch.testing.assert_close(mu[4].weight, sp[4].weight * factor)
    torch.testing.assert_close(mu[4].bias, sp[4].bias * factor)
    with pytest.raises(RuntimeError, match="rescale_params=False"):
        mup.set_base_shapes(mu, mlp(32), delta=mlp(64))


def test_missing_base_shapes_error():
    model = mlp(64)
    with pytest.raises(ValueError, match=r"parameter 0\.weight has no base shape.*set_base_shapes"):
        mup.MuAdam(model, lr=0.1)
    with pytest.raises(ValueError, match=r"of shape \(64, 5\).*set_base_shapes"):
        mup.mup_param_groups(model.parameters(), lr=0.1)
    mup.set_base_shapes(model, None)
    model.extra = nn.Linear(3, 3)  # added after set_base_shapes
    with pytest.raises(ValueError, match=r"extra\.weight has no base shape"):
        mup.MuSGD(model, lr=0.1)


def test_architecture_mismatch_errors():
    longer = mlp(64).append(nn.Linear(3, 3))
    with pytest.raises(
        ValueError, match=r"different arch.*only in the model: \['5.bias', '5.weight"
    ):
        mup.set_base_shapes(longer, mlp(32))
    with pytest.raises(ValueError, match=r"different architectures.*only in the delta model"):
        mup.set_base_shapes(mlp(64), mlp(32), delta=longer)
    conv = nn.Sequential(nn.Conv1d(5, 64, 1), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
    with pytest.raises(ValueError, match=r"'0\.weight' has shape \(32, 5\) in the base model"):
        mup.set_base_shapes(conv.append(mup.MuReadout(64, 3)), mlp(32))
    # a dimension base and delta agree on must not change in the model
    wide_in = nn.Sequential(nn.Linear(7, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
    wide_in.append(mup.MuReadout(64, 3))
    with pytest.raises(ValueError, match=r"'0\.weight' has shape \(64, 7\).*\(32, 5\)"):
        mup.set_base_shapes(wide_in, mlp(32), delta=mlp(48))


def test_plain_linear_readout_error():
    def bad(width):
        return nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, 3))

    with pytest.raises(ValueError, match=r"^2 maps the width dimension.*MuReadout"):
        mup.build_mup_model(bad, 128, 32)


def test_readout_needs_base_shapes():
    with pytest.raises(RuntimeError, match="set_base_shapes"):
        mlp(32)(torch.randn(2, 5))


def test_base_shapes_file_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = mup.build_mup_model(mlp, 256, 32)
    mup.save_base_shapes(model, tmp_path / "mlp.json")
    torch.manual_seed(0)
    from_file = mup.set_base_shapes(mlp(256), tmp_path / "mlp.json")
    for p, q in zip(model.parameters(), from_file.parameters(), strict=True):
        assert p.width_info == q.width_info
        torch.testing.assert_close(p, q)
    with pytest.raises(ValueError, match="different architectures"):
        mup.set_base_shapes(mlp(256)[:3], tmp_path / "mlp.json")
    conv = nn.Sequential(nn.Conv1d(5, 256, 1), *mlp(256)[1:])
    with pytest.raises(ValueError, match=r"'0\.weight' has shape \(256, 5, 1\) in the model"):
        mup.set_base_shapes(conv, tmp_path / "mlp.json")


def test_ddp_and_compile_prefixes():
    """`module.`/`_orig_mod.` wrapper prefixes on either side still match the base."""

    class Wrapper(nn.Module):  # what DistributedDataParallel looks like to named_parameters
        def __init__(self, module):
            super().__init__()
            self.module = module

    ddp = Wrapper(mlp(128))
    mup.set_base_shapes(ddp, mlp(32), delta=mlp(64))
    assert ddp.module[2].weight.width_info.width_mult == 4
    compiled = torch.compile(mlp(128))
    mup.set_base_shapes(compiled, Wrapper(mlp(32)), delta=mlp(64))
    got = lrs(compiled, mup.mup_param_groups(compiled, lr=1.0))
    assert got["_orig_mod.2.weight"] == (0.25, 0.0)


def test_deepcopy_needs_reattach():
    model = mup.build_mup_model(mlp, 128, 32)
    clone = copy.deepcopy(model)  # deepcopy drops attributes of Parameters
    with pytest.raises(ValueError, match="set_base_shapes"):
        mup.MuAdam(clone, lr=0.1)
    mup.set_base_shapes(clone, mlp(32), delta=mlp(64), rescale_params=False)
    for p, q in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(p, q) and p.width_info == q.width_info


def test_compile_fullgraph_forward_backward():
    """MuReadout's multiplier is a Python float: no graph break, no FakeTensor attribute lookup."""
    torch.manual_seed(0)
    model = mup.build_mup_model(mlp, 128, 32)
    x = torch.randn(8, 5)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    out.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    expected = model(x)
    expected.square().mean().backward()
    torch.testing.assert_close(out, expected)
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0


def test_weight_decay_coupling():
    model = mup.build_mup_model(mlp, 256, 32)
    coupled = lrs(model, mup.mup_param_groups(model, lr=0.1, weight_decay=0.01))
    lr, wd = coupled["2.weight"]
    assert lr == pytest.approx(0.1 / 8) and lr * wd == pytest.approx(0.1 * 0.01)
    decoupled = mup.mup_param_groups(model, lr=0.1, weight_decay=0.01, decoupled_wd=True)
    assert {wd for _, wd in lrs(model, decoupled).values()} == {0.01}


def test_param_groups_keep_user_groups():
    model = mup.build_mup_model(mlp, 256, 32)
    groups = mup.mup_param_groups(
        [
            {"params": model[:4].parameters(), "lr": 0.5, "betas": (0.8, 0.9)},
            {"params": model[4].parameters()},
        ],
        lr=0.1,
    )
    got = lrs(model, groups)
    assert got["2.weight"][0] == pytest.approx(0.5 / 8) and got["0.bias"][0] == 0.5
    assert got["4.weight"][0] == 0.1
    assert all(g["betas"] == (0.8, 0.9) for g in groups if g["lr"] != 0.1)
    torch.optim.Adam(groups)  # a torch optimizer takes them as they are
    with pytest.raises(ValueError, match="optimizer must be one of"):
        mup.mup_param_groups(model, lr=0.1, optimizer="lion")


def test_shared_readout_keeps_embedding_init():
    class Tied(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.embed = nn.Embedding(10, width)
            self.hidden = nn.Linear(width, width)
            self.out = mup.MuSharedReadout(self.embed.weight)

        def forward(self, idx):
            return self.out(self.hidden(self.embed(idx)))

    torch.manual_seed(0)
    sp = mup.set_base_shapes(Tied(128), None)
    torch.manual_seed(0)
    mu = mup.build_mup_model(Tied, 128, 32)
    assert mu.out.weight is mu.embed.weight and mu.out.width_mult == 4
    torch.testing.assert_close(mu.embed.weight, sp.embed.weight)
    torch.testing.assert_close(mu.out.bias, sp.out.bias * 2)
    assert mu(torch.tensor([1, 2])).shape == (2, 10)


def test_depth_mup():
    class ResNet(nn.Module):
        def __init__(self, width, depth, base_depth=2):
            super().__init__()
            self.inp = nn.Linear(4, width)
            self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
            for block in self.blocks:
                mup.mark_residual_branch(block, depth, base_depth)
            self.branch_mult = mup.depth_multiplier(depth, base_depth)
            self.out = mup.MuReadout(width, 1)

        def forward(self, x):
            h = self.inp(x)
            for block in self.blocks:
                h = h + self.branch_mult * torch.relu(block(h))
            return self.out(h)

    assert mup.depth_multiplier(8, 2) == 0.5 and mup.depth_multiplier(2, 2) == 1.0
    model = mup.build_mup_model(lambda w: ResNet(w, depth=8), 128, 32)
    adam = lrs(model, mup.mup_param_groups(model, lr=1.0))
    assert adam["blocks.0.weight"][0] == pytest.approx(1 / 4 / 2)  # width × depth factors
    assert adam["blocks.0.bias"][0] == pytest.approx(1 / 2)
    assert adam["inp.weight"][0] == 1.0 and adam["out.weight"][0] == 1.0
    sgd = lrs(model, mup.mup_param_groups(model, lr=1.0, optimizer="sgd"))
    assert sgd["blocks.0.weight"][0] == 1.0  # SGD: no depth factor
    assert model(torch.randn(3, 4)).shape == (3, 1)
    with pytest.raises(ValueError, match="positive"):
        mup.depth_multiplier(0, 2)


def test_coord_check_records_table():
    records = mup.coord_check(mlp, [32, 64], (torch.randn(16, 5), torch.randn(16, 3)), steps=2)
    assert {r["width"] for r in records} == {32, 64} and {r["step"] for r in records} == {0, 1}
    assert {r["module"] for r in records} == {"0", "1", "2", "3", "4"}
    first = [r for r in records if r["width"] == 32 and r["step"] == 0]
    assert [r["module"] for r in first] == ["0", "1", "2", "3", "4"]
    assert all(r["rms"] > 0 for r in records)
