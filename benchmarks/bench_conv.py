"""Benchmark FlexGraphConv against PyG's attention layers (issue 5); method in README.md.

Each case times forward+backward (``out.sum().backward()``) of one layer on one workload at one
dtype, after a correctness check against ours on the message-passing backend in float32. Cases are
isolated: an error, out-of-memory or timeout is recorded and the run goes on; the JSON is rewritten
after every case, and cases past ``--max-seconds`` are recorded as skipped.

Modules: ``conv_workloads`` (the graphs), ``conv_layers`` (ours and the peers, the structures),
``conv_cases`` (check, timing, profile, floors); ``common`` (timing, environment, tables).
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import common, conv_cases  # noqa: E402
from benchmarks.common import fmt  # noqa: E402
from benchmarks.conv_layers import Skip  # noqa: E402
from benchmarks.conv_workloads import EDGE_DIM, Graph, workload_plan  # noqa: E402

GRACE_S = 20  # how far past --max-seconds the last case may run before it is cut
LOCAL_LAYERS = ["TransformerConv", "TransformerConv+edge", "GATv2Conv", "naive-flex-local"]
LOCAL_LAYERS += ["ours-local", "ours-local+edge", "ours-local+rcm", "ours-local+mp"]
LOCAL_LAYERS += ["ours-local+edge+mp"]
GLOBAL_LAYERS = ["dense-MHA", "naive-flex-global", "ours-global", "ours-global+edge"]
GLOBAL_LAYERS += ["ours-global+pack", "ours-global+auto", "ours-global+nobias"]
SMOKE_CASES = ["molhiv-16/*", "molhiv-batches/*", "*/TransformerConv/*", "arxiv-random/ours-*"]
SMOKE_CASES += ["density-1in8/ours-local*"]


def add_ratios(records: list[dict]) -> None:
    """Ours ÷ each peer of the same workload, dtype and scope (one run), and ours' structure
    build ÷ the naive ``create_block_mask``."""
    done = [r for r in records if r["status"] == "ok" and "ms" in r]
    for ours in (r for r in done if r["kind"] == "ours"):
        peers = [
            r for r in done
            if r["kind"] == "peer" and r["scope"] == ours["scope"]
            and (r["workload"], r["dtype"]) == (ours["workload"], ours["dtype"])
        ]  # fmt: skip
        ours["ratio"] = {peer["layer"]: ours["ms"] / peer["ms"] for peer in peers}
        for peer in peers:
            if "build_ms" in peer and "build_ms" in ours:
                ours["build_ratio_vs_create_block_mask"] = ours["build_ms"] / peer["build_ms"]


def markdown(records: list[dict]) -> str:
    """One table line per case."""
    columns = ["workload", "layer", "dtype", "ms fwd+bwd:", "peak MB:", "build ms:", "rel err:"]
    rows = []
    for r in records:
        ratios = ", ".join(f"{peer} {ratio:.2f}×" for peer, ratio in r.get("ratio", {}).items())
        note = (r.get("reason") or r.get("error") or "").split("\n")[0][:160]
        if r["layer"] == "recompiles" and r["status"] == "ok":
            note = f"{r['compiles']} compiled graphs in {r['batches']} batches (at batches "
            note += f"{r['compile_batches']}), steady {fmt(r['steady_batch_ms'], '.1f')} ms/batch"
        elif r.get("pass") == "fwd":
            note = "forward only"
        elif "backend" in r:
            note = f"backend {r['backend']} (auto), block {r['block_size']}"
        rows.append([
            r["workload"], r["layer"], r["dtype"], fmt(r.get("ms"), ".3f"),
            fmt(r.get("peak_mb"), ".0f"), fmt(r.get("build_ms"), ".2f"),
            fmt(r.get("rel_err_out"), ".1e"), fmt(r.get("x_floor"), ".1f"), ratios,
            r["status"] + (": " + note if note else ""),
        ])  # fmt: skip
    return common.table([*columns, "× floor:", "ratio to peers", "status"], rows)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``TimeoutError`` in the main thread after ``seconds`` (SIGALRM)."""

    def expire(signum, frame):
        raise TimeoutError(f"case cut after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Run:
    """The records of one run, its time budget, and the JSON rewritten after every case."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.deadline = args, time.monotonic() + args.max_seconds
        self.records: list[dict] = []
        self.lost: str | None = None  # set once the CUDA context is lost (illegal memory access)
        self.env = common.environment(
            args.device, smoke=args.smoke, width=args.width, heads=args.heads,
            block_size=args.block_size, edge_dim=EDGE_DIM,
            allow_tf32=torch.backends.cuda.matmul.allow_tf32, **conv_cases.hardware_rates(args),
        )  # fmt: skip

    def selected(self, case_id: str) -> bool:
        return any(fnmatch.fnmatch(case_id, pattern) for pattern in self.args.cases)

    def attempt(self, record: dict, body: Callable[[], dict]) -> None:
        """Run one case unless filtered out or out of time; record its fields or its error."""
        case_id = f"{record['workload']}/{record['layer']}/{record['dtype']}"
        if not self.selected(case_id):
            return
        remaining = self.deadline - time.monotonic()
        if self.lost or remaining <= 0:
            record.update(status="skipped", reason=self.lost or "--max-seconds budget spent")
        else:
            try:
                with time_limit(min(4 * self.args.case_seconds, remaining + GRACE_S)):
                    record.update(body(), status="ok")
            except Skip as reason:
                record.update(status="skipped", reason=str(reason))
            except Exception as error:  # recorded, never fatal: the next case runs
                record.update(status="error", error=common.error_text(error))
                try:
                    common.sync(self.args.device)
                except Exception as lost:
                    self.lost = f"CUDA context lost in {case_id}: {lost}"[:500]
            gc.collect()
            if self.args.device.type == "cuda" and not self.lost:
                torch.cuda.empty_cache()
        self.records.append(record)
        elapsed = self.args.max_seconds - (self.deadline - time.monotonic())
        ms = f"{record['ms']:.3f} ms" if "ms" in record else ""
        print(f"[{elapsed:6.1f} s] {case_id}: {record['status']} {ms}", file=sys.stderr)
        self.flush()

    def flush(self) -> None:
        add_ratios(self.records)
        common.write_json(self.args.out, {"environment": self.env, "records": self.records})

    def workload(self, name: str, build: Callable[[], Graph]) -> None:
        """Every selected layer × dtype on one workload (built only if a case is selected)."""
        cases = [(l, d) for d in self.args.dtypes for l in LOCAL_LAYERS + GLOBAL_LAYERS]  # noqa: E741
        if not any(self.selected(f"{name}/{layer}/{dtype}") for layer, dtype in cases):
            return
        try:  # past the budget every case is recorded as skipped: no need to build
            graph, failure = build() if time.monotonic() < self.deadline else None, None
        except Exception as error:
            graph, failure = None, f"workload not built: {type(error).__name__}: {error}"[:500]
        for layer, dtype in cases:
            scope = "global" if layer in GLOBAL_LAYERS else "local"
            one_graph = graph is not None and graph.batch is None
            if (scope == "global" and one_graph) or (layer.endswith("+rcm") and not one_graph):
                continue  # global attention and packing for batches, rcm for one large graph
            record = dict(workload=name, layer=layer, dtype=dtype, scope=scope,
                          kind="ours" if layer.startswith("ours") else "peer")  # fmt: skip
            record.update(graph.sizes(scope) if graph is not None else {})

            def body(layer: str = layer, dtype: str = dtype, record: dict = record) -> dict:
                if graph is None:
                    raise Skip(failure)
                fields = conv_cases.run_case(layer, graph, getattr(torch, dtype), self.args)
                return {**fields, **conv_cases.floor_fields({**record, **fields}, self.env)}

            self.attempt(record, body)

    def recompiles(self) -> None:
        """The recompilation case, in bf16 on GPU (the training dtype), float32 on CPU."""
        dtype = torch.bfloat16 if self.args.device.type == "cuda" else torch.float32
        record = dict(workload="molhiv-batches", layer="recompiles", scope="local+global",
                      dtype=str(dtype).removeprefix("torch."), kind="ours")  # fmt: skip
        self.attempt(record, lambda: conv_cases.run_recompiles(self.args, dtype))


def plot(records: list[dict], path: Path) -> Path:
    """One panel per workload and scope with at least two layers that ran: ms forward+backward
    of each, one bar per dtype, labelled with its value."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    done = [r for r in records if r["status"] == "ok" and "ms" in r and r["layer"] != "recompiles"]
    panels = sorted({(r["workload"], r["scope"]) for r in done})
    panels = [
        p for p in panels if len({r["layer"] for r in done if (r["workload"], r["scope"]) == p}) > 1
    ]
    if not panels:
        raise ValueError("no workload has two timed layers to compare")
    dtypes = sorted({r["dtype"] for r in done})
    fig = Figure(figsize=(11, 2.2 + 1.6 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (workload, scope) in zip(axes, panels, strict=True):
        mine = [r for r in done if (r["workload"], r["scope"]) == (workload, scope)]
        layers = list(dict.fromkeys(r["layer"] for r in mine))
        height = 0.8 / len(dtypes)
        for i, dtype in enumerate(dtypes):
            ms = {r["layer"]: r["ms"] for r in mine if r["dtype"] == dtype}
            rows = [j for j, layer in enumerate(layers) if layer in ms]
            bars = ax.barh([j + i * height for j in rows], [ms[layers[j]] for j in rows], height,
                           label=dtype, color=f"C{i}")  # fmt: skip
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        ax.set_yticks([j + height * (len(dtypes) - 1) / 2 for j in range(len(layers))], layers)
        ax.invert_yaxis()
        ax.margins(x=0.08)
        ax.set_title(f"{workload}, {scope} attention", fontsize=10)
    axes[-1].set_xlabel("ms, forward + backward (median)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--smoke", action="store_true", help="tiny sizes on CPU, flex forward only")
    add("--out", type=Path, default=ROOT / "benchmarks/results/conv_h200.json")
    add("--dtypes", nargs="+", choices=["bfloat16", "float16", "float32"],
        help="default: bfloat16 float32 (smoke: float32)")  # fmt: skip
    add("--cases", nargs="+", help="fnmatch patterns of workload/layer/dtype (default: all)")
    add("--max-seconds", type=float, default=420.0, help="skip the cases after this budget")
    add("--case-seconds", type=float, default=30.0, help="fewer iterations past it; cut at 4×")
    add("--molhiv-root", type=Path, default=ROOT / "shared_data/ogbg_molhiv")
    add("--width", type=int, default=256)
    add("--heads", type=int, default=8)
    add("--block-size", type=int, default=128)
    add("--warmup", type=int, default=3, help="calls before timing, the compiling one included")
    add("--iters", type=int, default=10)
    add("--profile", type=int, default=0, metavar="N",
        help="after timing a case, N steps under torch.profiler: its top kernels")  # fmt: skip
    add("--report", type=Path, help="only print the table of an existing JSON")
    add("--plot", type=Path, help="with --report: also draw its timings into this PNG")
    args = parser.parse_args(argv)
    if args.smoke:
        args.width, args.heads, args.warmup, args.iters = 64, 4, 1, 2
    args.dtypes = args.dtypes or (["float32"] if args.smoke else ["bfloat16", "float32"])
    args.cases = args.cases or (SMOKE_CASES if args.smoke else ["*"])
    args.device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        records = json.loads(args.report.read_text())["records"]
        print(markdown(records))
        if args.plot:
            plot(records, args.plot)
        return
    if args.smoke:
        torch.set_num_threads(1)  # on a shared CPU, OpenMP spinning makes tiny cases 100× slower
    common.raise_recompile_limit()  # every case adds entries to the one compiled flex_attention
    run = Run(args)
    gc.freeze()  # the per-case gc.collect() then scans only what the cases allocate
    for name, build in workload_plan(args):
        if build is None:
            run.recompiles()
        else:
            run.workload(name, build)
    print(markdown(run.records))
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
