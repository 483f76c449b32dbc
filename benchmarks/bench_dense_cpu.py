"""CPU forward+backward of the blocked dense attention against message passing and a GPS-style
dense batch, to choose the dense backend's block size and its density threshold.

Global attention (every pair inside a graph) on batches of 128 and 256 graphs of ogbg-molhiv (or
``--dataset``), width 128 = 4 heads × 32, float32:

* ``dense B``: :func:`pyg_mup.nn.dense.dense_block_attention` on graphs packed into blocks of
  ``B`` slots (``packed_graph_starts``), with the scatter into slots and the gather back;
* ``mp``: message passing over all Σ n_g² within-graph pairs, as the message-passing backend
  (``pyg_mup/nn/backends.py``) does it (``index_select`` gathers of ``q[dst]``, ``k[src]``,
  PyG's ``softmax``, a scatter-add of ``alpha · v[src]``);
* ``gps``: ``to_dense_batch`` and batched attention with a key padding mask (what
  ``torch.nn.MultiheadAttention`` runs with ``need_weights=False``:
  ``scaled_dot_product_attention``).

``mods`` is ``mask`` (the same-graph mask) or ``mask+bias`` (also a learned per-pair bias read
through ``flat_row[q] + kv``, the global layer's edge/distance bias, whose table receives a
gradient). Batches are drawn from graphs of at most ``cap`` nodes, so that small block sizes can
be compared on the graphs they fit, and with one graph past 128 (and past 256, where the dataset
has such graphs: ogbg-molsider's reach 492 nodes), which only the larger blocks fit.

Local attention (pairs = edges): random graphs of ``B`` nodes (one per block) with a controlled
share of filled entries per block, ``E / (num_blocks · B²)``; the local ``FlexGraphConv``
(forward+backward, projections included, which cost both backends the same) on the dense backend
over the packed structure (mask and bias rows from its block-diagonal pair look-up) and on message
passing over the unpacked one; ``mask+bias`` adds the learned edge bias (``edge_dim=16``). The
crossover share is where the two medians cross (log-linear interpolation between grid points):
what ``graph.blocks.DENSE_MIN_BLOCK_DENSITY`` is read from (``--skip-global --out
results/dense_cpu_local.json``).

The machine's cores are shared, so every case is timed in interleaved rounds (each round runs
every case of a workload once) and the median is kept. Writes ``results/dense_cpu.json`` and
prints markdown tables.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import common  # noqa: E402
from benchmarks.common import fmt  # noqa: E402
from benchmarks.dense_cases import (  # noqa: E402
    CHANNELS,
    HEADS,
    LOCAL_NODES,
    Step,
    draw_batch,
    global_dense,
    global_gps,
    global_message_passing,
    local_graph,
    local_layer,
    packed,
    projections,
    training_graphs,
)

BLOCK_SIZES = (16, 32, 64, 128, 256, 512)
# largest graph of a batch: batches of graphs up to cap nodes, then batches with one graph past
# each of PASTS nodes (molhiv: 37 of 41,127 past 128, in about 1 of 9 batches of 128) and the rest
# drawn from all
CAPS = (16, 32, 64, 128)
PASTS = (128, 256)
BIAS_CAPS = (64, 128)  # the mask+bias variant on these and on the batches with a large graph
LARGER_BLOCKS = 2  # dense at the smallest block that fits and at most this many doublings
DENSITIES = (1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)
LOCAL_BLOCKS = (16, 32, 64, 128)
LOCAL_EDGE_DIM = 16  # mods 'mask+bias': the layer's learned edge bias from 16 edge features


# --------------------------------------------------------------------------------- timing
def timed(cases: dict[str, Step], args) -> dict[str, dict]:
    """``{name: {ms (median), min_ms, runs}}``: each case once per round (interleaved, so load
    drifts hit all cases alike) after a warm-up; a case leaves the rounds once it has run
    ``--case-budget`` seconds and ``--min-rounds`` times (the slow baselines)."""
    for step in cases.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, step in cases.items():
            ms = times[name]
            if len(ms) >= args.min_rounds and sum(ms) > args.case_budget * 1e3:
                continue
            start = time.perf_counter()
            step()
            ms.append((time.perf_counter() - start) * 1e3)
    return {
        name: dict(ms=statistics.median(ms), min_ms=min(ms), runs=len(ms))
        for name, ms in times.items()
    }


def run_global(graphs: tuple, args, generator: torch.Generator) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    records = []
    workloads = [(cap, None) for cap in CAPS]
    workloads += [(None, past) for past in PASTS if (graphs[0] > past).any()]
    for num_graphs in args.num_graphs:
        for cap, past in workloads:
            batch, edges = draw_batch(graphs, cap, num_graphs, rng, past)
            largest, nodes = int(batch.max()), int(batch.sum())
            inputs = projections(nodes, generator)
            for mods in ("mask", "mask+bias") if cap is None or cap in BIAS_CAPS else ("mask",):
                bias = None
                if mods == "mask+bias":
                    flat = int((batch * batch).sum())
                    bias = torch.randn(flat, HEADS, generator=generator).requires_grad_()
                cases = {"mp": global_message_passing(batch, inputs, bias)}
                if bias is None:
                    cases["gps"] = global_gps(batch, inputs)
                fitting = [block for block in BLOCK_SIZES if block >= largest]
                for block in fitting[: LARGER_BLOCKS + 1]:
                    cases[f"dense {block}"] = global_dense(batch, block, inputs, bias)
                times = timed(cases, args)
                for name, time_of in times.items():
                    backend, _, block = name.partition(" ")
                    record = dict(
                        num_graphs=num_graphs, cap=cap, past=past, largest=largest, nodes=nodes,
                        pairs=int((batch * batch).sum()), edges=edges, mods=mods, backend=backend,
                        **time_of, vs_mp=time_of["ms"] / times["mp"]["ms"],
                    )  # fmt: skip
                    if block:  # slots: padded to whole blocks; local share: edges per B² entry
                        slots = packed(batch, int(block))[0].seq_len
                        record.update(block_size=int(block), slots=slots,
                                      local_share=edges / (slots * int(block)))  # fmt: skip
                    records.append(record)
                print(f"global {num_graphs} graphs cap {cap} {mods}: " + ", ".join(
                    f"{k} {v['ms']:.1f}" for k, v in times.items()), flush=True)  # fmt: skip
    return records


def run_local(args, generator: torch.Generator) -> list[dict]:
    records = []
    for block in LOCAL_BLOCKS:
        for mods in ("mask", "mask+bias"):
            edge_dim = LOCAL_EDGE_DIM if mods == "mask+bias" else None
            cases, edges = {}, {}
            for density in DENSITIES:
                src, dst = local_graph(block, density, generator)
                edges[density] = src.numel()
                for backend, name in (("dense", "dense"), ("message_passing", "mp")):
                    step = local_layer(block, src, dst, backend, edge_dim, args.seed)
                    cases[f"{name} {density}"] = step
            times = timed(cases, args)
            for density in DENSITIES:
                dense, mp = times[f"dense {density}"], times[f"mp {density}"]
                records.append(dict(
                    block_size=block, mods=mods, density=density, edges=edges[density],
                    dense_ms=dense["ms"], mp_ms=mp["ms"], dense_vs_mp=dense["ms"] / mp["ms"],
                    dense_min_ms=dense["min_ms"], mp_min_ms=mp["min_ms"],
                    dense_vs_mp_min=dense["min_ms"] / mp["min_ms"],
                ))  # fmt: skip
            print(f"local B {block} {mods}: " + ", ".join(
                f"1/{round(1 / d)} {times[f'dense {d}']['ms']:.1f}/{times[f'mp {d}']['ms']:.1f}"
                for d in DENSITIES
            ), flush=True)  # fmt: skip
    return records


def crossovers(local: list[dict], ratio: str = "dense_vs_mp") -> list[dict]:
    """Share of filled entries per block above which dense stays faster, per block size and mods:
    interpolated (log-log) past the densest grid point where message passing still won; 0 when
    dense won everywhere, ``None`` when it never won."""
    found = []
    for block in LOCAL_BLOCKS:
        for mods in ("mask", "mask+bias"):
            rows = [r for r in local if r["block_size"] == block and r["mods"] == mods]
            losing = [i for i, r in enumerate(rows) if r[ratio] > 1]
            if not rows:
                continue
            if not losing:
                share = 0.0
            elif losing[-1] == len(rows) - 1:
                share = None
            else:
                low, high = rows[losing[-1]], rows[losing[-1] + 1]
                a, b = math.log(low[ratio]), math.log(high[ratio])
                t = a / (a - b)
                share = low["density"] ** (1 - t) * high["density"] ** t
            found.append(dict(block_size=block, mods=mods, ratio=ratio, crossover_density=share))
    return found


# ---------------------------------------------------------------------------------- report
def global_table(records: list[dict]) -> str:
    def cap_of(record: dict) -> int:
        return record["cap"] or 10**6 + record["past"]

    columns = ["graphs", "largest graph", "nodes:", "mods", "mp ms:", "gps ms:"]
    columns += [f"dense {b} ms:" for b in BLOCK_SIZES]
    rows = []
    for key in sorted({(r["num_graphs"], cap_of(r), r["mods"]) for r in records}):
        group = [r for r in records if (r["num_graphs"], cap_of(r), r["mods"]) == key]
        by = {(r["backend"], r.get("block_size")): r["ms"] for r in group}
        mp, first = by[("mp", None)], group[0]
        cap = f"≤{first['cap']}" if first["cap"] else f">{first['past']}"
        cells = [str(key[0]), f"{first['largest']} ({cap})", str(first["nodes"]), key[2]]
        cells += [fmt(mp, ".1f"), fmt(by.get(("gps", None)), ".1f")]
        for block in BLOCK_SIZES:
            ms = by.get(("dense", block))
            cells.append("" if ms is None else f"{ms:.1f} ({ms / mp:.2f}×)")
        rows.append(cells)
    return common.table(columns, rows)


def local_table(records: list[dict]) -> str:
    columns = ["B", "mods", "filled share", "edges:", "dense ms:", "mp ms:", "dense/mp:"]
    rows = [
        [str(r["block_size"]), r["mods"], f"1/{round(1 / r['density'])}", str(r["edges"]),
         fmt(r["dense_ms"], ".1f"), fmt(r["mp_ms"], ".1f"), fmt(r["dense_vs_mp"], ".2f")]
        for r in records
    ]  # fmt: skip
    return common.table(columns, rows)


def crossover_table(found: list[dict]) -> str:
    def share(value: float | None) -> str:
        if value is None:
            return "never"
        return "below the grid" if value == 0 else f"{value:.4f} (1/{1 / value:.0f})"

    by = {(c["block_size"], c["mods"], c["ratio"]): c["crossover_density"] for c in found}
    rows = [
        [str(block), mods, share(by[block, mods, "dense_vs_mp"]),
         share(by.get((block, mods, "dense_vs_mp_min")))]
        for block, mods, ratio in by if ratio == "dense_vs_mp"
    ]  # fmt: skip
    return common.table(["B", "mods", "from medians:", "from minima:"], rows)


def local_share_table(records: list[dict]) -> str:
    """What the dataset's own edges fill of the packed blocks (its local attention's share)."""
    shares = {}
    for r in records:
        if r["backend"] == "dense" and r["mods"] == "mask":
            shares.setdefault((r["num_graphs"], r["largest"]), {})[r["block_size"]] = r
    rows = [
        [str(graphs), str(largest)]
        + [fmt(by[b]["local_share"], ".4f") if b in by else "" for b in BLOCK_SIZES]
        for (graphs, largest), by in shares.items()
    ]
    return common.table(["graphs", "largest graph", *[f"B {b}:" for b in BLOCK_SIZES]], rows)


def markdown(global_records: list[dict], local: list[dict], found: list[dict]) -> str:
    parts = []
    if global_records:
        parts += [
            "Global attention, forward+backward median ms (dense: its ratio to mp)",
            global_table(global_records),
            "Share of the packed blocks' entries that the graphs' edges fill (local attention)",
            local_share_table(global_records),
        ]
    if local:
        parts += [
            f"Local attention, {LOCAL_NODES} nodes, forward+backward median ms",
            local_table(local),
            "Local: dense beats message passing above this share of filled entries per block",
            crossover_table(found),
        ]
    return "\n\n".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="../shared/data", help="OGB datasets folder")
    parser.add_argument("--dataset", default="ogbg-molhiv", help="the batches' graphs")
    parser.add_argument("--num-graphs", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per case (at most)")
    parser.add_argument("--min-rounds", type=int, default=3)
    parser.add_argument("--case-budget", type=float, default=2.0, help="seconds per case")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--skip-global", action="store_true", help="local attention only")
    parser.add_argument("--note", default="", help="free text stored in the JSON's environment")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/dense_cpu.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    load_before, began = os.getloadavg(), time.perf_counter()
    graphs = None if args.skip_global else training_graphs(args.root, args.dataset)
    global_records = [] if graphs is None else run_global(graphs, args, generator)
    local = [] if args.skip_local else run_local(args, generator)
    cross = crossovers(local) + crossovers(local, "dense_vs_mp_min")
    env = common.environment(
        torch.device("cpu"), heads=HEADS, channels=CHANNELS, dtype="float32", rounds=args.rounds,
        min_rounds=args.min_rounds, case_budget_s=args.case_budget,
        load_average_before=load_before, load_average_after=os.getloadavg(),
        wall_s=time.perf_counter() - began, note=args.note,
    )  # fmt: skip
    common.write_json(args.out, dict(environment=env, global_attention=global_records,
                                     local_attention=local, local_crossover=cross))  # fmt: skip
    print(markdown(global_records, local, cross))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
