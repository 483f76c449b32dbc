"""GINEVirtualNode on the shipped ogbg-molesol: shapes, gradients, determinism, training, no host
syncs, μP, and the parameter count matched to the GraphTransformer."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from graphs import predict
from torch.utils._python_dispatch import TorchDispatchMode
from torch_geometric.data import Batch

from pyg_mup import mup
from pyg_mup.data import load_dataset
from pyg_mup.models import GraphTransformer
from pyg_mup.models.encodings import encoding_transform, encodings_of
from pyg_mup.models.gine import GINEVirtualNode, count_parameters, matched_width
from pyg_mup.train import ConfigError, TrainConfig
from pyg_mup.train.factory import make_model

SPECS = ("rwse:8", "lap:4", "degree")
SYNC_OPS = ("nonzero", "unique", "_local_scalar_dense", "masked_select", "bincount")


@pytest.fixture(scope="module")
def batch() -> Batch:
    """64 molecules of ogbg-molesol's training split, with node encodings."""
    data = load_dataset("ogbg-molesol")
    transform = encoding_transform(SPECS)
    graphs = [transform(data.dataset[int(i)]) for i in data.split_idx["train"][:64]]
    return Batch.from_data_list(graphs)


def sp(model):
    return mup.set_base_shapes(model, None)


def test_shapes_and_gradients(batch):
    torch.manual_seed(0)
    model = sp(GINEVirtualNode(1, width=32, layers=3, readout_zero_init=False))
    out = predict(model, batch)
    assert out.shape == (batch.num_graphs, 1)
    torch.nn.functional.mse_loss(out, batch.y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    zero = sp(GINEVirtualNode(1, width=32, layers=3))  # default: predictions start at the bias
    assert torch.equal(predict(zero, batch), torch.zeros(batch.num_graphs, 1))


@pytest.mark.parametrize(
    "options",
    [
        {"virtual_node": False},
        {"edge_features": None},
        {"node_features": None, "edge_features": None, "layers": 1},
        {"encodings": SPECS},
    ],
)
def test_variants(batch, options):
    torch.manual_seed(0)
    model = sp(GINEVirtualNode(2, width=16, readout_zero_init=False, **options))
    encodings = encodings_of(batch, SPECS) if "encodings" in options else None
    x = None if options.get("node_features", "atom") is None else batch.x
    edge_attr = None if options.get("edge_features", "bond") is None else batch.edge_attr
    out = model(x, batch.edge_index, edge_attr, batch.batch, num_graphs=64, encodings=encodings)
    assert out.shape == (64, 2) and torch.isfinite(out).all()
    assert ("virtual_start" in dict(model.named_parameters())) == options.get("virtual_node", True)


def test_deterministic_given_a_seed(batch):
    def output(seed):
        torch.manual_seed(seed)
        model = sp(GINEVirtualNode(1, width=32, dropout=0.2, encodings=SPECS))
        torch.nn.init.normal_(model.head.weight)
        return predict(model, batch, encodings_of(batch, SPECS))  # training mode: dropout, flips

    assert torch.equal(output(0), output(0))
    assert not torch.allclose(output(0), output(1))


def test_a_few_steps_reduce_the_loss(batch):
    torch.manual_seed(0)
    model = sp(GINEVirtualNode(1, width=64, layers=3, encodings=SPECS))
    opt = mup.MuAdamW(model, lr=3e-3)
    encodings = encodings_of(batch, SPECS)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(predict(model, batch, encodings), batch.y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched; ``repeat_interleave`` without ``output_size`` counts as
    ``repeat_interleave_sync`` (its output size is read from the device)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name == "repeat_interleave" and kwargs.get("output_size") is None:
            name = "repeat_interleave_sync"
        self.ops[name] += 1
        return func(*args, **kwargs)


def test_no_host_syncs_in_a_training_step(batch):
    torch.manual_seed(0)
    model = sp(GINEVirtualNode(1, width=16, layers=3, dropout=0.1, encodings=SPECS))
    encodings = encodings_of(batch, SPECS)
    with OpCounter() as counter:
        torch.nn.functional.mse_loss(predict(model, batch, encodings), batch.y).backward()
    assert counter.ops["addmm"] > 0  # the counter sees the step
    syncs = {op: counter.ops[op] for op in (*SYNC_OPS, "repeat_interleave_sync")}
    assert not any(syncs.values()), syncs
    with OpCounter() as counter:  # without num_graphs: one read of batch.max()
        model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, encodings=encodings)
    assert counter.ops["_local_scalar_dense"] == 1


def test_mup_shapes_and_coord_check(batch):
    """μP: hidden MLP matrices get lr / width_mult; activations keep their size from width 32 to
    256 over 3 AdamW steps at lr 0.01 (measured 256/32 ratios 0.82–1.20 under μP; under SP the
    head grows 4.1× and the last conv 3.2× by step 2)."""
    model = mup.build_mup_model(lambda w: GINEVirtualNode(1, width=w, layers=2), 256, 32)
    hidden = {n for n, i in mup.width_infos(model).items() if i.ninf == 2}
    prefixes = ("convs.0.nn", "convs.1.nn", "virtual_mlps.0")
    assert hidden == {f"{prefix}.{i}.weight" for prefix in prefixes for i in (0, 3)}
    encodings = encodings_of(batch, SPECS)

    def loss(m, _):
        return torch.nn.functional.mse_loss(predict(m, batch, encodings), batch.y)

    def ratios(use_mup):
        records = mup.coord_check(
            lambda w: GINEVirtualNode(1, w, layers=2, encodings=SPECS, readout_zero_init=False),
            [32, 256],
            None,
            optimizer="adamw",
            steps=3,
            lr=0.01,
            mup=use_mup,
            loss_fn=loss,
        )
        rms = {(r["module"], r["step"], r["width"]): r["rms"] for r in records}
        return {(m, t): rms[(m, t, 256)] / v for (m, t, w), v in rms.items() if w == 32 and v}

    for (module, step), ratio in ratios(True).items():
        if (module, step) == ("head", 0):
            assert ratio < 1.0  # μP's readout starts at Θ(1/sqrt(width)) by design
        else:
            assert 0.5 < ratio < 2.0, (module, step, ratio)
    sp_ratios = ratios(False)
    assert min(sp_ratios[("head", 1)], sp_ratios[("head", 2)]) > 2.0, sp_ratios


@pytest.mark.parametrize(("width", "layers"), [(64, 4), (128, 4), (128, 6)])
def test_matched_width_is_within_ten_percent_of_the_transformer(width, layers):
    """Measured (GraphTransformer attention='both', heads 4 → GINE width at the same depth, its
    count over the transformer's): (64, 4) 180 177 → 76, 1.020; (128, 4) 686 353 → 152, 1.007;
    (128, 6) 1 017 993 → 148, 0.998; (256, 4) → 304, 0.998; (512, 6) → 596, 0.999."""
    with torch.device("meta"):
        target = count_parameters(
            GraphTransformer(1, width=width, layers=layers, heads=4, attention="both")
        )
        gine_width = matched_width(target, layers)
        size = count_parameters(GINEVirtualNode(1, width=gine_width, layers=layers))
    assert abs(size / target - 1) < 0.1, (gine_width, size, target)
    assert 1.1 * width < gine_width < 1.3 * width  # the documented rule: about 1.2× wider


def test_match_parameters_sizes_the_baseline_like_the_transformer():
    data = load_dataset("ogbg-molesol")
    example = encoding_transform(("rwse:16",))(data.dataset[0])
    settings = dict(
        width=64, base_width=32, layers=3, attention="both", local_branch="gine", pe=("rwse:16",)
    )
    transformer = make_model(TrainConfig(**settings), data.task, example)
    gine = make_model(
        TrainConfig(**settings, model="gine", match_parameters=True), data.task, example
    )
    plain = make_model(TrainConfig(**settings, model="gine"), data.task, example)
    ratio = count_parameters(gine) / count_parameters(transformer)
    assert abs(ratio - 1) < 0.1, ratio
    assert count_parameters(plain) / count_parameters(transformer) < 0.75  # what it corrects
    assert gine.width > 64 and gine.width % 4 == 0
    mults = {p.width_info.width_mult for p in gine.parameters() if p.width_info.ninf == 2}
    assert max(mults) > 1  # μP against the matched base width, not built at its own base
    with pytest.raises(ConfigError, match="--match-parameters sizes the --model gine baseline"):
        TrainConfig(**settings, match_parameters=True).validate()
    with pytest.raises(ConfigError, match="the --model gine baseline has none"):
        TrainConfig(**settings, model="gine", depth_parametrization="completep").validate()
