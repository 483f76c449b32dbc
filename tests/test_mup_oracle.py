"""pyg_mup.mup against microsoft/mup 1.0.0 on models mup supports: same init, same lrs."""

import sys
import types

import pytest
import torch
from torch import nn

try:
    import mup
except ModuleNotFoundError as missing:  # installed with --no-deps: no yaml, which mup needs only
    if missing.name != "yaml":  # for base-shape files, unused here; stub it just for the import
        raise
    sys.modules["yaml"] = types.ModuleType("yaml")
    import mup

    del sys.modules["yaml"]

from pyg_mup import mup as ours

WIDTH, BASE, DELTA = 96, 16, 32


def mlp(width, readout_cls):
    return nn.Sequential(
        nn.Linear(7, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 2 * width),
        nn.ReLU(),
        readout_cls(2 * width, 3),
    )


class EmbeddingStack(nn.Module):
    def __init__(self, width, readout_cls):
        super().__init__()
        self.embed = nn.Embedding(11, width)
        self.hidden = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.readout = readout_cls(width, 5)

    def forward(self, idx):
        return self.readout(self.norm(torch.relu(self.hidden(self.embed(idx)))))


def readout(lib, zero_init=False):
    cls = mup.MuReadout if lib is mup else ours.MuReadout

    def make(i, o):
        return cls(i, o, readout_zero_init=zero_init, output_mult=2.0)

    return make


def build(lib, factory, seed=0, **kwargs):
    """The same model through either library, from the same seed."""
    torch.manual_seed(seed)
    model = factory(WIDTH, readout(lib, **kwargs))
    base, delta = factory(BASE, readout(lib, **kwargs)), factory(DELTA, readout(lib, **kwargs))
    return lib.set_base_shapes(model, base, delta=delta)


FACTORIES = {"mlp": mlp, "embedding": EmbeddingStack}
INPUTS = {"mlp": lambda: torch.randn(5, 7), "embedding": lambda: torch.randint(0, 11, (5,))}


def per_param(model, opt):
    """{parameter name: (lr, weight_decay)} from an optimizer's groups."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in opt.param_groups:
        for p in g["params"]:
            out[names[id(p)]] = (g["lr"], g["weight_decay"])
    return out


@pytest.mark.parametrize("name", FACTORIES)
def test_init_matches_mup(name):
    theirs, mine = build(mup, FACTORIES[name]), build(ours, FACTORIES[name])
    for (n, p), (n2, q) in zip(theirs.named_parameters(), mine.named_parameters(), strict=True):
        assert n == n2
        torch.testing.assert_close(p, q, rtol=1e-6, atol=0, msg=n)
    x = INPUTS[name]()
    torch.testing.assert_close(theirs(x), mine(x))


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize(
    ("theirs_opt", "our_opt"),
    [(mup.MuAdam, ours.MuAdam), (mup.MuAdamW, ours.MuAdamW), (mup.MuSGD, ours.MuSGD)],
)
def test_learning_rates_match_mup(name, theirs_opt, our_opt):
    theirs, mine = build(mup, FACTORIES[name]), build(ours, FACTORIES[name])
    expected = per_param(theirs, theirs_opt(theirs.parameters(), lr=0.01, weight_decay=0.1))
    got = per_param(mine, our_opt(mine.parameters(), lr=0.01, weight_decay=0.1))
    assert got.keys() == expected.keys()
    for n, (lr, wd) in expected.items():
        assert got[n] == pytest.approx((lr, wd), rel=1e-12), n
    # and the width really changed something: hidden matrices are slower under Adam
    if our_opt is not ours.MuSGD:
        assert min(lr for lr, _ in got.values()) == pytest.approx(0.01 * BASE / WIDTH)


def test_param_groups_equal_optimizer_groups():
    model = build(ours, mlp)
    groups = ours.mup_param_groups(model, lr=0.01, weight_decay=0.1, optimizer="sgd")
    opt = torch.optim.SGD(groups, lr=123.0)  # the groups' own lrs win
    assert per_param(model, opt) == per_param(model, ours.MuSGD(model, lr=0.01, weight_decay=0.1))


def test_zero_init_readout_matches_mup():
    theirs, mine = build(mup, mlp, zero_init=True), build(ours, mlp, zero_init=True)
    assert torch.count_nonzero(mine[-1].weight) == 0
    x = torch.randn(4, 7)
    torch.testing.assert_close(theirs(x), mine(x))


def test_training_matches_mup():
    """A few MuAdam steps from the same init land on the same parameters."""
    theirs, mine = build(mup, EmbeddingStack), build(ours, EmbeddingStack)
    opts = [mup.MuAdam(theirs.parameters(), lr=0.05), ours.MuAdam(mine, lr=0.05)]
    idx, target = torch.randint(0, 11, (16,)), torch.randn(16, 5)
    for _ in range(3):
        for model, opt in zip((theirs, mine), opts, strict=True):
            opt.zero_grad()
            nn.functional.mse_loss(model(idx), target).backward()
            opt.step()
    for p, q in zip(theirs.parameters(), mine.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
