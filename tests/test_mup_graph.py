"""μP on PyG models: FlexGraphConv + PyG Linear + MuReadout groups, attention scale, coord check,
torch.compile, checkpoint resume, lazy layers, GAT attention vectors."""

import math

import pytest
import torch
from graphs import random_batch
from torch import nn
from torch_geometric.nn import GATConv, Linear, global_mean_pool

from pyg_mup import mup
from pyg_mup.nn import FlexGraphConv

HEADS, IN, EDGE_DIM, OUT = 4, 6, 3, 2


class GraphNet(nn.Module):
    """PyG Linear encoder → FlexGraphConv layers (message passing) → mean pool → MuReadout."""

    def __init__(self, width: int, mode: str = "local", layers: int = 2):
        super().__init__()
        extras = {"num_edge_types": 3, "max_distance": 4} if mode == "global" else {}
        self.encoder = Linear(IN, width)
        self.convs = nn.ModuleList(
            FlexGraphConv(
                width,
                width // HEADS,
                HEADS,
                edge_dim=EDGE_DIM,
                mode=mode,
                backend="message_passing",
                **extras,
            )
            for _ in range(layers)
        )
        self.readout = mup.MuReadout(width, OUT)

    def forward(self, x, edge_index, edge_attr, batch, edge_type=None):
        h = self.encoder(x)
        for conv in self.convs:
            extra = {"edge_type": edge_type} if conv.mode == "global" else {}
            h = torch.relu(conv(h, edge_index, edge_attr, batch, **extra))
        return self.readout(global_mean_pool(h, batch))


def graph_data(mode: str, seed: int = 0, sizes=(7, 9, 5, 8)):
    """`((x, edge_index, edge_attr, batch[, edge_type]), target)` for `coord_check`."""
    g = torch.Generator().manual_seed(seed)
    x, edge_index, batch = random_batch(list(sizes), 16, g, channels=IN)
    edge_attr = torch.randn(edge_index.size(1), EDGE_DIM, generator=g)
    inputs = (x, edge_index, edge_attr, batch)
    if mode == "global":
        inputs += (torch.randint(0, 3, (edge_index.size(1),), generator=g),)
    return inputs, torch.randn(len(sizes), OUT, generator=g)


def lrs_by_name(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g["lr"] for g in groups for p in g["params"]}


@pytest.mark.parametrize("mode", ["local", "global"])
def test_flexgraphconv_param_groups(mode):
    width, base = 256, 64
    model = mup.build_mup_model(lambda w: GraphNet(w, mode), width, base)
    lrs = lrs_by_name(model, mup.mup_param_groups(model, lr=1.0))
    hidden = {n for n in lrs if n.endswith(("lin_query.weight", "lin_key.weight"))}
    hidden |= {n for n in lrs if n.endswith(("lin_value.weight", "lin_skip.weight"))}
    assert len(hidden) == 8
    for name, lr in lrs.items():  # Adam: hidden matrices lr / width_mult, everything else as is
        assert lr == pytest.approx(base / width if name in hidden else 1.0), name
    vectors = ["convs.0.lin_edge.weight", "encoder.weight", "encoder.bias", "readout.weight"]
    if mode == "global":
        vectors += ["convs.1.no_edge_bias", "convs.1.gate_type.weight"]
        vectors += ["convs.0.gate_distance.weight", "convs.0.distance_bias.weight"]
    assert all(lrs[n] == 1.0 for n in vectors)

    sgd = lrs_by_name(model, mup.mup_param_groups(model, lr=1.0, optimizer="sgd"))
    assert sgd["convs.0.lin_query.weight"] == 1.0  # fan_in and fan_out both × 4
    assert sgd["encoder.weight"] == sgd["convs.0.lin_key.bias"] == width / base
    assert sgd["convs.0.lin_edge.weight"] == sgd["readout.bias"] == 1.0
    assert sgd["readout.weight"] == width / base


def test_attention_scale_becomes_mup():
    model = mup.build_mup_model(lambda w: GraphNet(w, "global"), 512, 64)
    d, d_base = 512 // HEADS, 64 // HEADS
    for conv in model.convs:
        assert conv.base_head_channels == d_base
        assert conv.scale == pytest.approx(math.sqrt(d_base) / d)
    conv = model.convs[0]
    conv.attn_mult = 2.0
    assert conv.scale == pytest.approx(2.0 * math.sqrt(d_base) / d)
    sp = mup.set_base_shapes(GraphNet(512, "global"), None)
    assert sp.convs[0].base_head_channels is None
    assert sp.convs[0].scale == pytest.approx(1 / math.sqrt(d))


def test_zero_query():
    model = mup.build_mup_model(GraphNet, 128, 32, zero_query=True)
    for conv in model.convs:
        assert torch.count_nonzero(conv.lin_query.weight) == 0
        assert torch.count_nonzero(conv.lin_query.bias) == 0
        assert torch.count_nonzero(conv.lin_key.weight) > 0


@pytest.mark.parametrize("mode", ["local", "global"])
def test_base_width_matches_sp(mode):
    """At base width a μP model and its SP twin compute the same function with the same lrs."""
    data, _ = graph_data(mode)
    torch.manual_seed(0)
    mu = mup.build_mup_model(lambda w: GraphNet(w, mode), 64, 64)
    torch.manual_seed(0)
    sp = mup.set_base_shapes(GraphNet(64, mode), None)
    torch.testing.assert_close(mu(*data), sp(*data), rtol=0, atol=0)
    assert lrs_by_name(mu, mup.mup_param_groups(mu, lr=0.1)) == lrs_by_name(
        sp, mup.mup_param_groups(sp, lr=0.1)
    )


def test_lazy_layer_error():
    class Lazy(GraphNet):
        def __init__(self, width):
            super().__init__(width)
            self.encoder = Linear(-1, width)

    with pytest.raises(ValueError, match=r"encoder\.weight.*uninitialized.*forward pass"):
        mup.build_mup_model(Lazy, 128, 32)
    model = Lazy(128)
    with pytest.raises(ValueError, match="uninitialized"):
        mup.set_base_shapes(model, GraphNet(32), delta=GraphNet(64))
    data, _ = graph_data("local")
    with pytest.raises(RuntimeError, match="set_base_shapes"):  # MuReadout without shapes
        model(*data)  # (this forward materialises the lazy encoder)
    assert not nn.parameter.is_lazy(model.encoder.weight)
    mup.set_base_shapes(model, GraphNet(32), delta=GraphNet(64))


def test_gat_attention_vectors():
    """GAT's `(1, heads, channels)` vectors are read out over width: lr and init ∝ 1/width."""

    def gat(width):
        return nn.ModuleDict(
            {"conv": GATConv(width, width // 2, heads=2), "out": mup.MuReadout(width, 1)}
        )

    torch.manual_seed(0)
    sp = mup.set_base_shapes(gat(256), None)
    torch.manual_seed(0)
    mu = mup.build_mup_model(gat, 256, 32)
    info = mu.conv.att_src.width_info
    assert info.readout_vector and info.width_mult == 8
    torch.testing.assert_close(mu.conv.att_src, sp.conv.att_src / math.sqrt(8))
    for optimizer in ("adam", "sgd"):
        lrs = lrs_by_name(mu, mup.mup_param_groups(mu, lr=1.0, optimizer=optimizer))
        assert lrs["conv.att_src"] == lrs["conv.att_dst"] == pytest.approx(1 / 8)
    # glorot-initialised hidden `lin` keeps its 1/sqrt(fan_in) std: unchanged
    torch.testing.assert_close(mu.conv.lin.weight, sp.conv.lin.weight)


def rms_table(records):
    """{(module, step): {width: rms}}."""
    table = {}
    for r in records:
        table.setdefault((r["module"], r["step"]), {})[r["width"]] = r["rms"]
    return table


def test_coord_check_graph_transformer(tmp_path):
    """Under μP activations keep their size from width 64 to 1024; under SP they blow up."""
    widths, steps = [64, 256, 1024], 4
    data = graph_data("local")

    def run(use_mup):
        return mup.coord_check(
            lambda w: GraphNet(w, "local"),
            widths,
            data,
            steps=steps,
            lr=0.01,
            mup=use_mup,
            seeds=(0, 1),
        )

    sp, mu = run(False), run(True)
    mup.plot_coord_check(sp, mu, str(tmp_path / "coord.png"))
    assert (tmp_path / "coord.png").stat().st_size > 10_000

    for (module, step), by_width in rms_table(mu).items():
        if module == "readout" and step == 0:
            # μP's readout starts at Θ(1/sqrt(width)) by design; it must not grow
            assert by_width[1024] < 1.5 * by_width[64]
        elif max(by_width.values()) > 0:
            ratio = max(by_width.values()) / min(by_width.values())
            assert ratio < 1.6, (module, step, by_width)
    # SP: the last conv and the readout grow with width after every update (measured 1024/64
    # ratios at steps 1-3: readout 378, 3.6, 3.7; convs.1 53, 9.6, 4.8; μP's stay within 1.35)
    sp_table = rms_table(sp)
    for module in ("readout", "convs.1"):
        ratios = [sp_table[(module, t)][1024] / sp_table[(module, t)][64] for t in range(1, steps)]
        assert min(ratios) > 2.5, (module, ratios)
        assert math.prod(ratios) ** (1 / len(ratios)) > 8, (module, ratios)


def test_compile_graph_model_no_mup_graph_breaks():
    """Graph breaks in a compiled μP graph model come from graph-structure code, never μP's."""
    model = mup.build_mup_model(GraphNet, 128, 32)
    inputs, _ = graph_data("local")
    explanation = torch._dynamo.explain(model)(*inputs)
    frames = [f.filename for r in explanation.break_reasons for f in r.user_stack]
    assert not [f for f in frames if "pyg_mup/mup/" in f.replace("\\", "/")]


def test_checkpoint_resume_is_exact(tmp_path):
    """Save model + optimizer + scheduler, reload into a fresh μP model: training continues
    exactly as if never saved."""
    data, target = graph_data("global")

    def fresh(seed):
        torch.manual_seed(seed)
        model = mup.build_mup_model(lambda w: GraphNet(w, "global"), 128, 32)
        opt = mup.MuAdamW(model, lr=1e-2, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return model, opt, sched

    def train(model, opt, sched, n):
        for _ in range(n):
            opt.zero_grad()
            nn.functional.mse_loss(model(*data), target).backward()
            opt.step()
            sched.step()

    model, opt, sched = fresh(0)
    train(model, opt, sched, 3)
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
    torch.save(state, tmp_path / "ckpt.pt")
    train(model, opt, sched, 3)

    resumed, opt2, sched2 = fresh(1)  # another init: everything must come from the checkpoint
    state = torch.load(tmp_path / "ckpt.pt")
    resumed.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    train(resumed, opt2, sched2, 3)
    for (name, p), q in zip(model.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]
