"""``bench_train.py``'s models: ours (``GraphTransformer``) and the peers built from PyG's
``GPSConv`` and ``TransformerConv``, at the same width, layers and heads, with the same
encoders; and the few places that touch our structure API (the loader's collate, forwarding,
which calls a profile marks, the backends picked), kept here so that an API change edits one
module."""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.nn import GPSConv, TransformerConv, global_mean_pool

from pyg_mup.graph import GraphStructure, StructureCollater, StructuredBatch
from pyg_mup.models import GraphTransformer
from pyg_mup.models.encoders import FeatureEncoder, FeatureSpec
from pyg_mup.mup import set_base_shapes
from pyg_mup.nn.backends import resolve_backend

EDGE_CHANNELS = 32  # GraphTransformer's default edge_channels, shared by every model
MODELS = ("ours-both", "gps", "ours-local", "transformerconv")
PEERS = {"ours-both": "gps", "ours-local": "transformerconv"}
HOP_DISTANCE = "hop_distance"  # AddHopDistance's attribute: collated only for global attention


class GPSLayer(GPSConv):
    """PyG's ``GPSConv`` (local ``TransformerConv`` with edge features + global
    ``nn.MultiheadAttention``, GPSConv's defaults otherwise: batch norm, ReLU MLP), called as
    every :class:`Peer` layer is."""

    def __init__(self, width: int, heads: int) -> None:
        conv = TransformerConv(width, width // heads, heads=heads, edge_dim=EDGE_CHANNELS)
        super().__init__(width, conv, heads=heads, attn_type="multihead", dropout=0.0)

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor, batch: Tensor) -> Tensor:
        return super().forward(h, edge_index, batch, edge_attr=edge_attr)  # passed to the conv


class LocalBlock(nn.Module):
    """Our ``TransformerBlock(attention='local')`` with PyG's ``TransformerConv`` as the
    attention: ``h ← h + Conv(LN(h))``, ``h ← h + FFN(LN(h))``; no root weight (the residual
    is the skip path), as in ours."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(width)
        self.conv = TransformerConv(
            width, width // heads, heads=heads, edge_dim=EDGE_CHANNELS, root_weight=False
        )
        self.norm_ffn = nn.LayerNorm(width)
        self.ffn = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor, batch: Tensor) -> Tensor:
        h = h + self.conv(self.norm_attn(h), edge_index, edge_attr)
        return h + self.ffn(self.norm_ffn(h))


class Peer(nn.Module):
    """A peer model: our encoders → ``layers`` × ``layer(width, heads)`` → ``norm`` → mean pool
    → linear readout. ``gps``: :class:`GPSLayer`, no final norm (PyG's GPS); ``transformerconv``:
    :class:`LocalBlock` and a LayerNorm, the structure of ``GraphTransformer(attention='local')``.
    Shapes as :class:`~pyg_mup.models.GraphTransformer`."""

    def __init__(
        self,
        out_channels: int,
        width: int,
        layers: int,
        heads: int,
        features: tuple[FeatureSpec, FeatureSpec],
        layer: type[nn.Module],
        norm: bool,
    ) -> None:
        super().__init__()
        self.node_encoder = FeatureEncoder(features[0], width)
        self.edge_encoder = FeatureEncoder(features[1], EDGE_CHANNELS)
        self.layers = nn.ModuleList(layer(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width) if norm else nn.Identity()
        self.head = nn.Linear(width, out_channels)

    def forward(
        self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, batch: Tensor, num_graphs: int
    ) -> Tensor:
        h, e = self.node_encoder(x), self.edge_encoder(edge_attr)
        for layer in self.layers:
            h = layer(h, edge_index, e, batch)
        return self.head(global_mean_pool(self.norm(h), batch, size=num_graphs))


def build_model(name: str, out_channels: int, specs: tuple, args: argparse.Namespace) -> nn.Module:
    """One of :data:`MODELS` at the run's width, layers and heads (float32 weights)."""
    sizes = dict(width=args.width, layers=args.layers, heads=args.heads)
    if name.startswith("ours-"):
        model = GraphTransformer(
            out_channels, **sizes, attention=name.removeprefix("ours-"), node_features=specs[0],
            edge_features=specs[1], edge_channels=EDGE_CHANNELS,
        )  # fmt: skip
        return set_base_shapes(model, None)  # standard parametrization: MuReadout needs it
    layer, norm = {"gps": (GPSLayer, False), "transformerconv": (LocalBlock, True)}[name]
    return Peer(out_channels, **sizes, features=specs, layer=layer, norm=norm)


def collater(model: nn.Module, device: torch.device) -> StructureCollater | None:
    """Ours: the ``collate_fn`` that builds the model's structures for ``device`` in the loader
    (``model.structure_spec``), collating the stored hop distances only where global attention
    reads them; the peers: ``None`` (PyG's own loader)."""
    if not isinstance(model, GraphTransformer):
        return None
    spec = model.structure_spec(device.type)
    return StructureCollater(spec, exclude_keys=None if "global" in spec.modes else [HOP_DISTANCE])


def unpack(item: StructuredBatch | Batch) -> tuple[Batch, dict[str, GraphStructure] | None]:
    """A loader's item as ``(batch, structures)``; the peers' batches carry no structures."""
    if isinstance(item, StructuredBatch):
        return item.batch, item.structures
    return item, None


def forward(model: nn.Module, batch: Batch, structures: dict[str, GraphStructure] | None) -> Tensor:
    """A model's predictions ``[num_graphs, out_channels]`` for a batch on its device; ours
    reads the structures its loader built (``structures=``) and the host-known ``num_graphs``."""
    if structures is None:
        return model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, batch.num_graphs)
    return model(
        batch.x, batch.edge_index, batch.edge_attr, batch.batch,
        num_graphs=batch.num_graphs, structures=structures,
    )  # fmt: skip


STRUCTURE_CALLS = [(GraphStructure, "build", "structures")]
"""``(owner, attribute, name)`` of the call that builds a structure, whoever makes it (a model
given no structures, a conv given none): what the step's structure time and op counts wrap.
With structures from the loader ours makes no such call in the step; the peers build none."""


def attention_calls(model: nn.Module) -> list[tuple[object, str, str]]:
    """``(owner, attribute, range)`` of every model's attention calls by kind (ours:
    ``FlexGraphConv`` per mode; GPS: ``TransformerConv`` local, ``MultiheadAttention``
    global), so a profile compares ours and the peers branch for branch."""
    if isinstance(model, GraphTransformer):
        return [
            (conv, "forward", f"attention_{mode}")
            for block in model.blocks
            for mode, conv in block.attn.items()
        ]
    calls = [(layer.conv, "forward", "attention_local") for layer in model.layers]
    gps = [layer for layer in model.layers if isinstance(layer, GPSLayer)]
    return calls + [(layer.attn, "forward", "attention_global") for layer in gps]


def our_backends(
    model: nn.Module, structures: dict[str, GraphStructure], dtype: torch.dtype
) -> dict:
    """Per attention mode of ours, the backend ``'auto'`` picks for the loader's structures at
    the compute ``dtype``, and the block density that decides it (1.0 in global mode): on CUDA
    message passing for sparse local blocks and FlexAttention else; on the CPU message passing
    (local) and the dense backend (global)."""
    picked = {}
    for mode, structure in structures.items():
        conv = model.blocks[0].attn[mode]
        probe = structure.edge_index.new_empty(0, conv.heads, conv.out_channels, dtype=dtype)
        backend = resolve_backend(conv.backend, probe, structure, need_weights=False, dropout=False)
        picked[mode] = dict(backend=backend, block_density=structure.block_density)
    return picked
