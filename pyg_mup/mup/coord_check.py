"""Coordinate check: does every activation keep its size as the model widens?

The standard test of a μP implementation (Tensor Programs V; microsoft/mup's
`coord_check`): train models of several widths for a few steps at a large learning rate and
record the root-mean-square of each module's output. Under μP the curves are flat in width at
every step; under SP the later-layer activations grow with width once training starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .optim import MuAdam, MuAdamW, MuSGD
from .shape import build_mup_model, set_base_shapes

_OPTIMIZERS = {"adam": MuAdam, "adamw": MuAdamW, "sgd": MuSGD}


def default_loss(model: nn.Module, data: Any) -> Tensor:
    """`data = (inputs, target)`: MSE of `model(*inputs)` (or `model(inputs)`) against target."""
    inputs, target = data
    out = model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)
    return F.mse_loss(out, target)


def _first_tensor(out: Any) -> Tensor | None:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    return None


def _recording_hook(sums: dict, name: str, clock: dict) -> Callable:
    """Forward hook adding the output RMS of module `name` to `sums[(width, step, name)]`."""

    def record(_module: nn.Module, _inputs: Any, out: Any) -> None:
        t = _first_tensor(out)
        if t is not None:
            key = (clock["width"], clock["step"], name)
            sums[key] = sums.get(key, 0.0) + t.detach().float().pow(2).mean().sqrt().item()

    return record


def coord_check(
    make_model: Callable[[int], nn.Module],
    widths: Sequence[int],
    data: Any,
    optimizer: str = "adam",
    steps: int = 4,
    lr: float = 1e-2,
    mup: bool = True,
    base_width: int | None = None,
    loss_fn: Callable[[nn.Module, Any], Tensor] = default_loss,
    seeds: Iterable[int] = (0,),
    module_filter: Callable[[str, nn.Module], bool] | None = None,
) -> list[dict]:
    """Train `make_model(width)` for each width and record per-module output RMS.

    Args:
        make_model: builds the model at a width (it must scale every width dim with it).
        widths: widths to compare, e.g. `[64, 256, 1024]`.
        data: one batch, fed to `loss_fn(model, data)` at every step.
        optimizer: `'adam'`, `'adamw'` or `'sgd'` (`MuAdam`/`MuAdamW`/`MuSGD`; under SP all
            width factors are 1, so they are the plain torch optimizers).
        steps: number of recorded forward passes; the record at step `t` is after `t` updates.
        lr: learning rate (base lr under μP).
        mup: μP with base width `base_width` (default `widths[0]`), else SP.
        loss_fn: `(model, data) -> scalar loss`; by default MSE on `data = (inputs, target)`.
        seeds: RMS values are averaged over these seeds (model init).
        module_filter: `(name, module) -> bool` to choose recorded modules; default every
            submodule whose output is a tensor (or a tuple starting with one).

    Returns a list of `{'width', 'module', 'step', 'rms'}` dicts, one per width, recorded
    module and step, ordered by width, step, then forward order of the modules.
    """
    base_width = widths[0] if base_width is None else base_width
    seeds = list(seeds)
    sums: dict[tuple[int, int, str], float] = {}
    clock = {"width": 0, "step": 0}
    for width in widths:
        for seed in seeds:
            torch.manual_seed(seed)
            if mup:
                model = build_mup_model(make_model, width, base_width)
            else:
                model = set_base_shapes(make_model(width), None)
            opt = _OPTIMIZERS[optimizer](model, lr=lr)
            clock["width"] = width
            handles = [
                m.register_forward_hook(_recording_hook(sums, name, clock))
                for name, m in model.named_modules()
                if name and (module_filter is None or module_filter(name, m))
            ]
            for step in range(steps):
                clock["step"] = step
                opt.zero_grad(set_to_none=True)
                loss_fn(model, data).backward()
                opt.step()
            for h in handles:
                h.remove()
    return [
        {"width": w, "module": name, "step": t, "rms": total / len(seeds)}
        for (w, t, name), total in sums.items()
    ]


def plot_coord_check(
    records_sp: list[dict], records_mup: list[dict], path: str, title: str = "coord check"
) -> str:
    """Plot RMS vs width (log-log), one panel per step, SP on the top row and μP below (each
    column on one y scale, so the two are comparable); save a PNG to `path` and return it."""
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    steps = sorted({r["step"] for r in records_sp + records_mup})
    fig = Figure(figsize=(3.2 * len(steps), 6.4))
    axes = fig.subplots(2, len(steps), squeeze=False, sharex=True, sharey="col")
    for row, (label, records) in enumerate((("SP", records_sp), ("μP", records_mup))):
        modules = list(dict.fromkeys(r["module"] for r in records))
        for col, step in enumerate(steps):
            ax = axes[row][col]
            for module in modules:
                pts = sorted(
                    (r["width"], r["rms"])
                    for r in records
                    if r["module"] == module and r["step"] == step
                )
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker=".", label=module)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{label}, step {step}", fontsize=9)
            if row == 1:
                ax.set_xlabel("width")
            if col == 0:
                ax.set_ylabel("activation RMS")
    handles, labels = axes[1][-1].get_legend_handles_labels()
    rows = -(-len(labels) // 4)
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.03 * rows + 0.02, 1, 0.96))
    fig.savefig(path, dpi=120)
    return path
