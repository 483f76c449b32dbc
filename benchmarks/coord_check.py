"""Coordinate check of a FlexGraphConv model, SP beside μP: writes a PNG and a JSON table.

Usage: ``python benchmarks/coord_check.py [--out DIR] [--widths 64 128 256 512 1024]``
(CPU, about a minute). Under μP every module's activation RMS stays flat as width grows; under SP
the outputs blow up after the first Adam step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn
from torch_geometric.nn import Linear, global_mean_pool

from pyg_mup import FlexGraphConv
from pyg_mup.mup import MuReadout, coord_check, plot_coord_check

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()
    data = random_graphs([7, 9, 5, 8])
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
