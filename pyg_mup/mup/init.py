"""Turn a default-initialised (SP) model into a μP-initialised one.

The rules (Tensor Programs V, Table 3 for SGD and Table 8 for Adam, in microsoft/mup's form
with a `1/width_mult` output multiplier) and what PyTorch/PyG defaults already give:

- hidden `[width, width]` matrices: std ∝ 1/sqrt(fan_in). Kaiming-style defaults (`nn.Linear`,
  PyG `Linear`) already are; PyG's glorot init is rescaled to the same (mup's xavier rule).
- input layers, embeddings, norms: width-independent. Kaiming over a fixed fan-in already is;
  a glorot-initialised PyG `Linear(fixed, width)` is rescaled to its base-width std.
- biases of layers whose fan-in is width: the default `uniform(±1/sqrt(fan_in))` shrinks with
  width, so they are multiplied by sqrt(fan_in_mult) (as mup does).
- readouts: `MuReadout.rescale_init` (weight and bias × sqrt(width_mult), then the forward
  multiplier 1/width_mult makes the effective weight ∝ 1/fan_in).
- GAT-style attention vectors `(1, heads, channels)`: contracted over width like a readout with
  no multiplier, so their std goes from ∝ 1/sqrt(channels) to ∝ 1/channels.
- attention queries (`zero_query=True`): zero, as Tensor Programs V recommends for
  Transformers (the attention logits then start at 0 at every width).

At base width every factor is 1: the μP model starts exactly where its SP twin does.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch_geometric.nn.dense.linear import Linear as PygLinear

from .readout import MuReadout

LINEAR_TYPES = (nn.Linear, PygLinear)


def check_readouts(model: nn.Module) -> None:
    """A linear layer from width to a fixed size must be a `MuReadout` (else its output grows)."""
    for name, module in model.named_modules():
        if not isinstance(module, LINEAR_TYPES) or isinstance(module, MuReadout):
            continue
        info = module.weight.width_info
        if 1 in info.width_dims and 0 not in info.width_dims:
            raise ValueError(
                f"{name} maps the width dimension to a fixed size {tuple(module.weight.shape)} "
                "but is not a MuReadout: make it pyg_mup.mup.MuReadout, or let its output scale "
                "with width too"
            )


def _glorot_factor(weight: torch.Tensor) -> float:
    """Rescale glorot's std sqrt(2/(fan_in+fan_out)) to μP's (mup's `_inf_fan_adjust_xavier`)."""
    info = weight.width_info
    fan_out, fan_in = info.shape[0], info.shape[1]
    base_out, base_in = info.base_shape[0], info.base_shape[1]
    factor = math.sqrt((fan_out + fan_in) / (base_out + base_in))
    if info.ninf == 2:
        factor /= math.sqrt(info.fan_in_mult)
    return factor


def _zero_query(module: nn.Module) -> None:
    query = module.lin_query
    query.weight.zero_()
    if getattr(query, "bias", None) is not None:
        query.bias.zero_()


def rescale_parameters(model: nn.Module, zero_query: bool = False) -> None:
    """Apply the μP init rescale above, once (`set_base_shapes` calls it).

    Raises `RuntimeError` if the model was already rescaled: re-attaching shapes to a μP model
    (e.g. one loaded from a checkpoint) needs `set_base_shapes(..., rescale_params=False)`.
    """
    if getattr(model, "_mup_rescaled", False):
        raise RuntimeError(
            "this model's parameters were already rescaled to μP; call set_base_shapes with "
            "rescale_params=False when re-attaching base shapes"
        )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, MuReadout):
                module.rescale_init()
            elif isinstance(module, (*LINEAR_TYPES, _ConvNd)):
                if getattr(module, "weight_initializer", None) == "glorot":
                    module.weight.mul_(_glorot_factor(module.weight))
                if module.bias is not None:
                    module.bias.mul_(math.sqrt(module.weight.width_info.fan_in_mult))
            if zero_query and hasattr(module, "base_head_channels"):
                _zero_query(module)
        for p in model.parameters():
            if p.width_info.readout_vector:
                p.mul_(1.0 / math.sqrt(p.width_info.width_mult))
    model._mup_rescaled = True
