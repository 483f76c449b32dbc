"""``bench_train.py``'s records turned into results: ours' ratios to each peer, one model's
record over several rounds, and the markdown table printed after a run."""

from __future__ import annotations

import statistics

from benchmarks import common
from benchmarks.common import fmt
from benchmarks.train_models import PEERS


def add_ratios(records: list[dict]) -> dict:
    """``{'ours-both/gps': x, ...}``: ours' graphs/s over its peer's (> 1: ours is faster),
    end to end; each ours record also gets ``ratio_to_peer``, from the rates without the
    loader's time ``ratio_to_peer_excl_loader``, and from the median steps
    ``ratio_to_peer_median_step``."""
    done = {r["model"]: r for r in records if r["status"] == "ok"}
    ratios = {}
    for ours, peer in PEERS.items():
        if ours in done and peer in done:
            mine, theirs = done[ours], done[peer]
            ratio = mine["graphs_per_s"] / theirs["graphs_per_s"]
            mine["ratio_to_peer"] = ratios[f"{ours}/{peer}"] = ratio
            rate = "graphs_per_s_excl_loader"
            excl = common.ratio(mine.get(rate), theirs.get(rate))
            if excl is not None:
                mine["ratio_to_peer_excl_loader"] = excl
            # same batches: the peer's median step over ours (robust to a loaded host's stalls)
            median = common.ratio(theirs.get("median_step_ms"), mine.get("median_step_ms"))
            if median is not None:
                mine["ratio_to_peer_median_step"] = median
    return ratios


def markdown(records: list[dict]) -> str:
    """One table line per model."""
    columns = ["model", "params:", "steps/s:", "graphs/s:", "excl. loader:", "ms/step:"]
    columns += ["median ms:", "build in step:", "collate ms:", "of it build ms:", "ops/step:"]
    columns += ["data-dep./step:", "in optimizer:", "peak MB:", "graph replay ms:"]
    rows = []
    for r in records:
        peer = ""
        if "ratio_to_peer" in r:
            median = fmt(r.get("ratio_to_peer_median_step"), ".2f")
            peer = f"{r['ratio_to_peer']:.2f}× {PEERS[r['model']]} (median step {median}×)"
        compiles = f"{r['compiles_warmup']}/{r['compiles_timed']}" if "compiles_timed" in r else ""
        error = (": " + r["error"].split("\n")[0][:120]) if "error" in r else ""
        ops = r.get("ops", {})
        by_phase = ops.get("data_dependent_per_step_by_phase", {})
        rows.append([
            r["model"], fmt(r.get("params"), ","), fmt(r.get("steps_per_s"), ".2f"),
            fmt(r.get("graphs_per_s"), ".0f"), fmt(r.get("graphs_per_s_excl_loader"), ".0f"),
            fmt(r.get("ms_per_step"), ".2f"), fmt(r.get("median_step_ms"), ".2f"),
            fmt(r.get("structure_share"), ".1%"), fmt(r.get("collate_ms_per_batch"), ".1f"),
            fmt(r.get("structure_build_ms_per_batch"), ".1f"),
            fmt(ops.get("ops_per_step"), ".0f"), fmt(ops.get("data_dependent_per_step"), ".1f"),
            fmt(by_phase.get("optimizer"), ".1f"), fmt(r.get("peak_mb"), ".0f"),
            fmt(r.get("cuda_graph", {}).get("graph_ms"), ".2f"), compiles, peer,
            r["status"] + error,
        ])  # fmt: skip
    return common.table([*columns, "compiles warm-up/timed:", "vs peer", "status"], rows)


def merged(records: list[dict]) -> dict:
    """One model's record over rounds: the first round's, with the medians over the rounds of
    its rates and step times, and each round's values in ``rounds``."""
    record = dict(records[0])
    ok = [r for r in records if r["status"] == "ok"]
    if len(records) > 1 and len(ok) == len(records):
        keys = ("graphs_per_s", "graphs_per_s_excl_loader", "median_step_ms", "ms_per_step")
        record["rounds"] = [{k: r[k] for k in keys} for r in ok]
        record.update({k: statistics.median(r[k] for r in ok) for k in keys})
    return record
