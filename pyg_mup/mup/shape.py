"""Base shapes: which dimensions of each parameter grow with width, and by how much.

μP needs, for every parameter, the ratio between its size in the model being trained and its
size in a *base* model whose hyperparameters were tuned. `set_base_shapes` compares the model
with a base model (and a *delta* model at another width, to tell width dimensions from fixed
ones) parameter by parameter and attaches a `WidthInfo` to each parameter as `p.width_info`.
The optimizers (`optim.py`) and the init rescale (`init.py`) read it; `MuReadout` and attention
modules get their multipliers as plain Python floats/ints on the module, so `torch.compile`
sees constants and never looks up attributes on FakeTensors.

The width info lives on the `Parameter` objects: `load_state_dict`, `.to()`, DDP and
`torch.compile` keep those objects, so it survives them. `copy.deepcopy` does not copy
parameter attributes; call `set_base_shapes(copy, base, rescale_params=False)` on a deep copy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .init import check_readouts, rescale_parameters
from .readout import MuReadout

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel, torch.compile
_FORMAT = "pyg_mup.base_shapes/1"


@dataclass(frozen=True)
class WidthInfo:
    """How one parameter scales with width.

    `shape` is the parameter's shape in this model; `base_shape` its shape in the base model;
    `width_dims` the indices of the dimensions that grow with width ("infinite" in Tensor
    Programs terms). Weights follow PyTorch's `[fan_out, fan_in, ...]` layout.
    `readout_vector` marks a GAT-style attention vector `(1, heads, channels)` that is
    contracted over its width dimension like an output layer without multiplier.
    """

    shape: tuple[int, ...]
    base_shape: tuple[int, ...]
    width_dims: frozenset[int]
    readout_vector: bool = False

    def dim_mult(self, i: int) -> float:
        """Width multiplier `shape[i] / base_shape[i]` of dimension `i` (1 if it is fixed)."""
        return self.shape[i] / self.base_shape[i] if i in self.width_dims else 1.0

    @property
    def ninf(self) -> int:
        """Number of width dimensions: 0 fixed, 1 vector-like, 2 matrix-like."""
        return len(self.width_dims)

    @property
    def width_mult(self) -> float:
        """Multiplier of the last width dimension: the fan-in one for a hidden matrix."""
        return self.dim_mult(max(self.width_dims)) if self.width_dims else 1.0

    @property
    def fan_in_mult(self) -> float:
        return self.dim_mult(1) if len(self.shape) >= 2 else 1.0

    @property
    def fan_out_mult(self) -> float:
        return self.dim_mult(0) if self.shape else 1.0


@dataclass
class _Base:
    shapes: dict[str, tuple[int, ...]]
    width_dims: dict[str, frozenset[int]]
    head_channels: dict[str, int]


def canonical_name(name: str) -> str:
    """Drop DDP's `module.` and torch.compile's `_orig_mod.` prefixes from a parameter name."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def _param_shapes(model: nn.Module, which: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name, p in model.named_parameters():
        if nn.parameter.is_lazy(p):
            raise ValueError(
                f"parameter {name!r} of the {which} is uninitialized (a lazy layer such as "
                "torch_geometric.nn.Linear(-1, ...)): materialise it first, by giving "
                "in_channels explicitly or running one forward pass, then call set_base_shapes"
            )
        shapes[canonical_name(name)] = tuple(p.shape)
    return shapes


def _head_channels(model: nn.Module) -> dict[str, int]:
    """Per-head channels of every attention module (duck typing: has `base_head_channels`)."""
    return {
        canonical_name(name): int(m.head_channels)
        for name, m in model.named_modules()
        if hasattr(m, "base_head_channels")
    }


def _check_same_names(a: dict, b: dict, a_name: str, b_name: str) -> None:
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise ValueError(
            f"the {a_name} and the {b_name} have different architectures: parameters only in "
            f"the {a_name}: {only_a[:5]}, only in the {b_name}: {only_b[:5]}"
        )


def _base_from_models(base: nn.Module, other: nn.Module, other_name: str) -> _Base:
    """Width dims are those where `base` and `other` (delta or the model itself) differ."""
    base_shapes = _param_shapes(base, "base model")
    other_shapes = _param_shapes(other, other_name)
    _check_same_names(base_shapes, other_shapes, "base model", other_name)
    width_dims = {}
    for name, shape in base_shapes.items():
        other_shape = other_shapes[name]
        if len(shape) != len(other_shape):
            raise ValueError(
                f"the base model and the {other_name} have different architectures: "
                f"{name!r} has shape {shape} in the base model, {other_shape} in the {other_name}"
            )
        width_dims[name] = frozenset(
            i for i, (b, o) in enumerate(zip(shape, other_shape, strict=True)) if b != o
        )
    return _Base(base_shapes, width_dims, _head_channels(base))


def save_base_shapes(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the base shapes of a model that went through `set_base_shapes` to a JSON file.

    `set_base_shapes(model, path)` then works without building base/delta models.
    """
    params = {}
    for name, p in model.named_parameters():
        info = _require_info(canonical_name(name), p)
        params[canonical_name(name)] = {
            "base_shape": list(info.base_shape),
            "width_dims": sorted(info.width_dims),
        }
    heads = {
        canonical_name(n): m.base_head_channels
        for n, m in model.named_modules()
        if getattr(m, "base_head_channels", None) is not None
    }
    with open(path, "w") as f:
        json.dump({"format": _FORMAT, "params": params, "head_channels": heads}, f, indent=1)


def _load_base(path: str | os.PathLike) -> _Base:
    with open(path) as f:
        data = json.load(f)
    if data.get("format") != _FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a pyg_mup base-shapes file")
    params = data["params"]
    return _Base(
        {n: tuple(v["base_shape"]) for n, v in params.items()},
        {n: frozenset(v["width_dims"]) for n, v in params.items()},
        {n: int(c) for n, c in data["head_channels"].items()},
    )


def _require_info(name: str, p: torch.Tensor) -> WidthInfo:
    info = getattr(p, "width_info", None)
    if info is None:
        raise ValueError(
            f"parameter {name} has no base shape: call pyg_mup.mup.set_base_shapes(model, base) "
            "(or build the model with build_mup_model) before building the optimizer"
        )
    return info


def _is_attention_vector(module: nn.Module, p: torch.Tensor, width_dims: frozenset[int]) -> bool:
    """GAT-style `(1, heads, channels)` vector owned by a message-passing layer (`propagate`)."""
    return (
        hasattr(module, "propagate")
        and p.dim() >= 3
        and p.shape[0] == 1
        and width_dims == {p.dim() - 1}
    )


def set_base_shapes(
    model: nn.Module,
    base: nn.Module | str | os.PathLike | None,
    delta: nn.Module | None = None,
    rescale_params: bool = True,
    zero_query: bool = False,
) -> nn.Module:
    """Attach μP width information to every parameter of `model` and apply the μP init.

    Args:
        model: the model to train, at its real width (may be DDP- or torch.compile-wrapped).
        base: the same architecture at the base width (the width whose hyperparameters are
            tuned; build it on the `meta` device), a file written by `save_base_shapes`, or
            `None` for standard parametrization (every width multiplier is 1).
        delta: the same architecture at a width different from `base`; the dimensions where
            `base` and `delta` differ are the width dimensions. Without it, the dimensions where
            `base` and `model` differ are (so a model at base width would look width-free).
        rescale_params: turn the default (SP) init into the μP init (`init.rescale_parameters`).
            Use `False` when re-attaching shapes to a model that is already μP-initialised.
        zero_query: with `rescale_params`, zero-initialise attention query projections.

    Returns `model`. Raises `ValueError` if the models differ in architecture or a parameter is
    still lazy (uninitialized).
    """
    shapes = _param_shapes(model, "model")
    if base is None:
        if delta is not None:
            raise ValueError("delta needs a base model; base=None means standard parametrization")
        spec = _Base(shapes, {n: frozenset() for n in shapes}, {})
    elif isinstance(base, (str, os.PathLike)):
        if delta is not None:
            raise ValueError("a base-shapes file already says which dims scale; drop delta")
        spec = _load_base(base)
    else:
        other, other_name = (model, "model") if delta is None else (delta, "delta model")
        spec = _base_from_models(base, other, other_name)

    _check_same_names(spec.shapes, shapes, "base model", "model")
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        key = canonical_name(name)
        base_shape, dims, shape = spec.shapes[key], spec.width_dims[key], shapes[key]
        if len(base_shape) != len(shape) or any(
            i not in dims and shape[i] != base_shape[i] for i in range(len(shape))
        ):
            raise ValueError(
                f"the base model and the model have different architectures: {key!r} has shape "
                f"{shape} in the model but {base_shape} in the base, and only dims "
                f"{sorted(dims)} scale with width (base and delta must differ in every width dim)"
            )
        owner = modules[name.rpartition(".")[0]]
        p.width_info = WidthInfo(shape, base_shape, dims, _is_attention_vector(owner, p, dims))

    for name, module in modules.items():
        if isinstance(module, MuReadout):
            module.width_mult = module.weight.width_info.width_mult
        if hasattr(module, "base_head_channels"):
            module.base_head_channels = spec.head_channels.get(canonical_name(name))
    check_readouts(model)
    if rescale_params:
        rescale_parameters(model, zero_query=zero_query)
    return model


def build_mup_model(
    make_model: Callable[[int], nn.Module],
    width: int,
    base_width: int,
    delta_width: int | None = None,
    **set_base_shapes_kwargs,
) -> nn.Module:
    """Build `make_model(width)` with μP width information, base and delta built on `meta`.

    `delta_width` defaults to twice `base_width`; it only has to differ from `base_width` in
    every dimension that scales. Extra keyword arguments go to `set_base_shapes`.
    """
    delta_width = 2 * base_width if delta_width is None else delta_width
    if delta_width == base_width:
        raise ValueError("delta_width must differ from base_width")
    model = make_model(width)
    with torch.device("meta"):
        base, delta = make_model(base_width), make_model(delta_width)
    return set_base_shapes(model, base, delta=delta, **set_base_shapes_kwargs)


def width_infos(model: nn.Module) -> dict[str, WidthInfo]:
    """`{parameter name: WidthInfo}`; raises `ValueError` naming any parameter without one."""
    return {n: _require_info(n, p) for n, p in model.named_parameters()}
