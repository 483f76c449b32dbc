"""``bench_conv.py``'s layers: ours on a prebuilt structure, the naive FlexAttention, PyG's
convs and GPSConv's dense global branch, each as ``forward(x [N, C], edge_attr [E, F])``, and
the structures and masks they attend over (timed: the build is part of the comparison)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from torch_geometric.nn import GATv2Conv, TransformerConv
from torch_geometric.utils import to_dense_batch

from benchmarks.common import timed_call
from benchmarks.conv_workloads import EDGE_DIM, Graph
from pyg_mup import FlexGraphConv, GraphStructure
from pyg_mup.nn.backends import _compiled_flex_attention, resolve_backend  # one compile cache

INT32_PAIRS = 2**31  # a dense N×N look-up inside a kernel is indexed with int32
DENSE_MASK_PAIRS = 2**32  # create_block_mask materialises N×N masks: ≈ 11 bytes per pair
LAYOUTS = {"+rcm": "rcm", "+pack": "pack"}  # suffix -> GraphStructure.build(layout=...)
MESSAGE_PASSING = "+mp"  # suffix: ours on the message-passing backend (what 'auto' picks when
# the blocks are sparse) instead of FlexAttention
NO_PAIR_BIAS = "+nobias"  # suffix: global mode without the learned no-edge bias, so no
# per-pair table (nor its gradient) reaches the kernels: the ablation of what that table costs
AUTO = "+auto"  # suffix: ours as a model runs it: backend='auto' on a structure built with
# GraphStructure.build's defaults for the device (on the CPU: the dense backend, global mode)


class Skip(Exception):
    """A case that cannot run here; the message is the recorded reason."""


class Ours(nn.Module):
    """``FlexGraphConv`` on a structure built outside the timed region (a model's loader builds
    it once per batch for all its layers), called as a model's block calls it, without
    ``edge_index``: ``forward(x [N, C], edge_attr [E, F]) -> [N, C]``."""

    def __init__(self, conv: FlexGraphConv, graph: Graph, structure: GraphStructure, edges: bool):
        super().__init__()
        self.conv, self.graph, self.structure, self.edges = conv, graph, structure, edges

    def forward(self, x: Tensor, edge_attr: Tensor) -> Tensor:
        attr = edge_attr if self.edges else None  # edges and batch: the structure holds them
        return self.conv(x, edge_attr=attr, structure=self.structure)


class NaiveFlex(nn.Module):
    """The naive FlexAttention: the conv's own projections and a ``create_block_mask`` mask."""

    def __init__(self, conv: FlexGraphConv, block_mask: BlockMask):
        super().__init__()
        self.conv, self.block_mask = conv, block_mask

    def forward(self, x: Tensor, edge_attr: Tensor) -> Tensor:
        conv, heads, channels = self.conv, self.conv.heads, self.conv.out_channels
        q, k, v = (
            lin(x).view(-1, heads, channels).transpose(0, 1).unsqueeze(0)
            for lin in (conv.lin_query, conv.lin_key, conv.lin_value)
        )
        attend = _compiled_flex_attention() if x.is_cuda else flex_attention
        out = attend(q, k, v, block_mask=self.block_mask, scale=conv.scale)
        return out.squeeze(0).transpose(0, 1).reshape(x.size(0), -1) + conv.lin_skip(x)


class PygLocal(nn.Module):
    """A PyG gather/scatter conv over the workload's edges."""

    def __init__(self, conv: nn.Module, graph: Graph, edges: bool):
        super().__init__()
        self.conv, self.graph, self.edges = conv, graph, edges

    def forward(self, x: Tensor, edge_attr: Tensor) -> Tensor:
        return self.conv(x, self.graph.edge_index, *([edge_attr] if self.edges else []))


class DenseGlobal(nn.Module):
    """GPSConv's global branch: ``to_dense_batch`` + ``MultiheadAttention`` with padding mask."""

    def __init__(self, width: int, heads: int, graph: Graph):
        super().__init__()
        self.attn, self.graph = nn.MultiheadAttention(width, heads, batch_first=True), graph

    def forward(self, x: Tensor, edge_attr: Tensor) -> Tensor:
        h, mask = to_dense_batch(x, self.graph.batch)
        return self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)[0][mask]


def build_structure(
    graph: Graph,
    mode: str,
    args,
    layout: str | None = None,
    flex: bool | None = True,
    block_size: int | None = -1,
) -> tuple[GraphStructure, dict]:
    """Ours: ``GraphStructure.build`` for the benchmark device (``target``), with a block mask
    if ``flex`` (``None``: the build's default for the device), timed (median ms of 3 after a
    warm-up). ``block_size`` -1 takes ``--block-size``; ``None`` the build's default. Returns
    the structure and the fields recorded about it (``build_ms``, ``block_density`` — 1.0 in
    global mode, where every entry of a graph's block is attended —, ``block_size``; with a
    block mask ``blocks``, and in local mode ``lookup``). The one place that calls the
    structure API."""
    batch = graph.batch if mode == "global" else None
    options = dict(
        mode=mode,
        block_size=args.block_size if block_size == -1 else block_size,
        flex=flex,
        target=args.device.type,
        **({"layout": layout} if layout else {}),
    )

    def build() -> GraphStructure:
        return GraphStructure.build(graph.edge_index, graph.x.size(0), batch, **options)

    structure, build_ms = timed_call(build, args.device, 1 if args.smoke else 3)
    info = dict(
        build_ms=build_ms, block_density=structure.block_density, block_size=structure.block_size
    )
    if structure.block_mask is not None:
        info["blocks"] = blocks_of(structure.block_mask)
        if mode == "local":
            info["lookup"] = structure.lookup_kind
    return structure, info


def naive_mask(graph: Graph, mode: str, args) -> tuple[BlockMask, float]:
    """The naive way: ``create_block_mask`` over all N² pairs of a dense adjacency look-up
    (local) or a same-graph check (global); median ms of 3 after a warm-up."""
    n = graph.x.size(0)
    if mode == "local" and n * n >= INT32_PAIRS:
        raise Skip(f"dense N×N lookup overflows int32 indexing (N² = {n * n:.3g} ≥ 2³¹)")
    if n * n > DENSE_MASK_PAIRS:
        raise Skip(f"create_block_mask materialises N×N masks (N² = {n * n:.3g} > 2³²)")
    if mode == "local":
        adjacency = torch.zeros(n, n, dtype=torch.bool, device=args.device)
        adjacency[graph.edge_index[1], graph.edge_index[0]] = True

        def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            return adjacency[q, kv]
    else:
        batch = graph.batch

        def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
            return batch[q] == batch[kv]

    create = lambda: create_block_mask(mask_mod, 1, 1, n, n, args.device, args.block_size)  # noqa: E731
    return timed_call(create, args.device, 1 if args.smoke else 3)


def blocks_of(mask: BlockMask) -> int:
    """Non-empty (partial + full) blocks of a ``BlockMask``."""
    full = mask.full_kv_num_blocks
    return int(mask.kv_num_blocks.sum()) + (int(full.sum()) if full is not None else 0)


def make_layer(layer: str, graph: Graph, args) -> tuple[nn.Module, nn.Module | None, dict]:
    """``(module, message-passing reference or None, info)`` of one case, in float32.

    The reference is ours with the same weights on the message-passing backend; the naive flex
    peer shares the conv's weights, so the same reference checks it."""
    width, heads, edges = args.width, args.heads, "+edge" in layer
    channels, edge_dim = width // heads, EDGE_DIM if edges else None
    if layer.startswith("TransformerConv"):
        conv = TransformerConv(width, channels, heads, edge_dim=edge_dim)
        return PygLocal(conv, graph, edges), None, {}
    if layer == "GATv2Conv":
        return PygLocal(GATv2Conv(width, channels, heads), graph, False), None, {}
    if layer == "dense-MHA":
        return DenseGlobal(width, heads, graph), None, {}
    mode = "global" if "global" in layer else "local"
    auto = layer.endswith(AUTO)
    backend = "auto" if auto else "message_passing" if layer.endswith(MESSAGE_PASSING) else "flex"
    conv = FlexGraphConv(width, channels, heads, mode=mode, edge_dim=edge_dim, backend=backend)
    if NO_PAIR_BIAS in layer:
        conv.no_edge_bias = None
    reference = copy.deepcopy(conv)
    reference.backend = "message_passing"
    if layer.startswith("naive"):
        mask, build_ms = naive_mask(graph, mode, args)
        structure = build_structure(graph, mode, args)[0]  # for the reference only
        info = dict(build_ms=build_ms, blocks=blocks_of(mask))
        return NaiveFlex(conv, mask), Ours(reference, graph, structure, False), info
    layout = next((name for suffix, name in LAYOUTS.items() if layer.endswith(suffix)), None)
    if auto:  # what a model gets: the build's defaults for this device, 'auto' picks
        structure, info = build_structure(graph, mode, args, flex=None, block_size=None)
        probe = graph.x.new_empty(0, heads, channels)
        info["backend"] = resolve_backend("auto", probe, structure, False, False)
    else:
        structure, info = build_structure(graph, mode, args, layout, flex=backend == "flex")
    return Ours(conv, graph, structure, edges), Ours(reference, graph, structure, edges), info
