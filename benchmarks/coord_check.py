"""Coordinate check of a FlexGraphConv model, SP beside μP: writes a PNG and a JSON table.

Usage: ``python benchmarks/coord_check.py [--out DIR] [--widths 64 128 256 512 1024]``
(CPU, about a minute). Under μP every module's activation RMS stays flat as width grows; under SP
the outputs blow up after the first Adam step.

Across depth: ``python benchmarks/coord_check.py --depths 2 4 8 16`` trains a residual stack of
pre-norm FlexGraphConv blocks at a fixed width, with the branches unscaled (``none``), scaled by
depth-μP or by CompleteP (:mod:`pyg_mup.mup.depth`, base depth the smallest), and writes
``coord_check_depth.json/png``: the RMS of the residual stream after the last block against
depth, per step (flat in depth: the depth rule keeps updates and activations at their size).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn
from torch_geometric.nn import Linear, global_mean_pool

from pyg_mup import FlexGraphConv
from pyg_mup.mup import (
    ALPHAS,
    MuReadout,
    coord_check,
    depth_multiplier,
    mark_residual_branch,
    plot_coord_check,
)

IN_CHANNELS, EDGE_DIM, HEADS = 16, 3, 4
RECORDED = ("encoder", "convs.0.lin_query", "convs.0.lin_value", "convs.0", "convs.1", "readout")


class GraphNet(nn.Module):
    """Linear encoder → two local FlexGraphConv layers with edge bias → mean pool → MuReadout."""

    def __init__(self, width: int):
        super().__init__()
        self.encoder = Linear(IN_CHANNELS, width)
        self.convs = nn.ModuleList(
            FlexGraphConv(
                width, width // HEADS, HEADS, edge_dim=EDGE_DIM, backend="message_passing"
            )
            for _ in range(2)
        )
        self.readout = MuReadout(width, 1)

    def forward(self, x, edge_index, edge_attr, batch):
        h = self.encoder(x)
        for conv in self.convs:
            h = torch.relu(conv(h, edge_index, edge_attr))
        return self.readout(global_mean_pool(h, batch))


def random_graphs(sizes: list[int], seed: int = 0):
    """``((x, edge_index, edge_attr, batch), target)``: random graphs of the given sizes."""
    generator = torch.Generator().manual_seed(seed)
    ptr = torch.tensor([0, *sizes]).cumsum(0)
    edges = [
        torch.randint(0, n, (2, 2 * n), generator=generator) + ptr[g] for g, n in enumerate(sizes)
    ]
    edge_index = torch.cat(edges, 1)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x = torch.randn(int(ptr[-1]), IN_CHANNELS, generator=generator)
    edge_attr = torch.randn(edge_index.size(1), EDGE_DIM, generator=generator)
    return (x, edge_index, edge_attr, batch), torch.randn(len(sizes), 1, generator=generator)


class DepthNet(nn.Module):
    """Linear encoder → ``depth`` blocks ``h ← h + m · conv(LN(h))`` → mean pool → MuReadout."""

    def __init__(self, depth: int, width: int, base_depth: int, alpha: float | None):
        super().__init__()
        self.encoder = Linear(IN_CHANNELS, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.convs = nn.ModuleList(
            FlexGraphConv(
                width, width // HEADS, HEADS, edge_dim=EDGE_DIM, backend="message_passing"
            )
            for _ in range(depth)
        )
        self.mult = 1.0 if alpha is None else depth_multiplier(depth, base_depth, alpha)
        if alpha is not None:
            for norm, conv in zip(self.norms, self.convs, strict=True):
                mark_residual_branch(norm, depth, base_depth, alpha)
                mark_residual_branch(conv, depth, base_depth, alpha)
        self.final = nn.Identity()  # recorded: the residual stream after the last block
        self.readout = MuReadout(width, 1)

    def forward(self, x, edge_index, edge_attr, batch):
        h = self.encoder(x)
        for norm, conv in zip(self.norms, self.convs, strict=True):
            h = h + self.mult * conv(norm(h), edge_index, edge_attr)
        return self.readout(global_mean_pool(self.final(h), batch))


def depth_check(args: argparse.Namespace, data) -> None:
    """The coord check across depth (see the module docstring)."""
    from matplotlib.figure import Figure

    base = min(args.depths)
    records = {}
    for name, alpha in (("none", None), *ALPHAS.items()):
        rows = coord_check(
            lambda depth, alpha=alpha: DepthNet(depth, args.depth_width, base, alpha),
            args.depths,
            data,
            mup=False,  # fixed width: only the depth rules act
            steps=args.steps,
            lr=args.lr,
            seeds=(0, 1),
            module_filter=lambda name, _module: name == "final",
        )
        # coord_check calls its size argument "width"; here it is the depth
        records[name] = [
            {"depth": r["width"], "module": r["module"], "step": r["step"], "rms": r["rms"]}
            for r in rows
        ]
    (args.out / "coord_check_depth.json").write_text(json.dumps(records, indent=1))
    steps = sorted({r["step"] for r in records["none"]})
    fig = Figure(figsize=(3.2 * len(steps), 3.2 * len(records)))
    axes = fig.subplots(len(records), len(steps), squeeze=False, sharex=True, sharey="col")
    for row, (name, rows) in enumerate(records.items()):
        for col, step in enumerate(steps):
            pts = sorted((r["depth"], r["rms"]) for r in rows if r["step"] == step)
            axes[row][col].plot(*zip(*pts, strict=True), marker=".")
            axes[row][col].set_xscale("log", base=2)
            axes[row][col].set_yscale("log")
            axes[row][col].set_title(f"{name}, step {step}", fontsize=9)
        axes[row][0].set_ylabel("RMS of the final hidden state")
    for ax in axes[-1]:
        ax.set_xlabel("depth (blocks)")
    fig.suptitle(f"coord check across depth (width {args.depth_width}, Adam, lr {args.lr})")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(args.out / "coord_check_depth.png", dpi=120)
    print(f"wrote {args.out / 'coord_check_depth.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--depths", type=int, nargs="+", help="coord check across depth instead")
    parser.add_argument("--depth-width", type=int, default=64, help="width of the depth check")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()
    data = random_graphs([7, 9, 5, 8])
    if args.depths:
        args.out.mkdir(parents=True, exist_ok=True)
        return depth_check(args, data)
    options = {
        "steps": args.steps,
        "lr": args.lr,
        "seeds": (0, 1),
        "module_filter": lambda name, module: name in RECORDED,
    }
    records = {
        name: coord_check(GraphNet, args.widths, data, mup=mup, **options)
        for name, mup in (("sp", False), ("mup", True))
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coord_check.json").write_text(json.dumps(records, indent=1))
    plot_coord_check(
        records["sp"],
        records["mup"],
        args.out / "coord_check.png",
        title=f"FlexGraphConv coord check (Adam, lr {args.lr})",
    )
    print(f"wrote {args.out / 'coord_check.png'}")


if __name__ == "__main__":
    main()
