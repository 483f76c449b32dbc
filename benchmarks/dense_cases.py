"""``bench_dense_cpu.py``'s inputs and timed bodies: an ogbg dataset's batch sizes, random local
graphs, and one forward+backward step per backend (blocked dense, message passing, GPS-style
dense batch) for global attention, and of the local ``FlexGraphConv`` on the dense and
message-passing backends."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.utils import scatter, to_dense_batch

from pyg_mup.data import load_dataset
from pyg_mup.graph import GraphStructure
from pyg_mup.graph.layout import Layout, pack_layout, packed_graph_starts, slot_layout
from pyg_mup.nn import FlexGraphConv
from pyg_mup.nn.backends import message_passing_weights
from pyg_mup.nn.dense import dense_block_attention
from pyg_mup.score_mods import pair_bias

HEADS, CHANNELS = 4, 32
SCALE = 1.0 / CHANNELS  # μP
LOCAL_NODES = 2048
Step = Callable[[], None]


# ------------------------------------------------------------------------------------ inputs
def training_graphs(root: str, name: str = "ogbg-molhiv") -> tuple[np.ndarray, np.ndarray]:
    """Node and (directed) edge counts of the training graphs of an ogbg dataset."""
    data = load_dataset(name, root=root)
    train = data.split_idx["train"].numpy()
    slices = data.dataset.slices
    return slices["x"].diff().numpy()[train], slices["edge_index"].diff().numpy()[train]


def draw_batch(
    graphs: tuple[np.ndarray, np.ndarray], cap: int | None, count: int, rng, past: int | None
):
    """Node counts ``[G]`` of a random batch (in random order) and its number of edges: graphs of
    at most ``cap`` nodes, or (``cap=None``) one graph of more than ``past`` nodes and the rest
    drawn from all."""
    sizes, edges = graphs
    if cap is None:
        large = rng.choice(np.flatnonzero(sizes > past), size=1)
        drawn = np.concatenate([large, rng.choice(sizes.size, size=count - 1, replace=False)])
    else:
        drawn = rng.choice(np.flatnonzero(sizes <= cap), size=count, replace=False)
    drawn = rng.permutation(drawn)
    return torch.from_numpy(sizes[drawn]).long(), int(edges[drawn].sum())


def projections(num_nodes: int, generator: torch.Generator) -> list[Tensor]:
    """Leaf ``query``, ``key``, ``value`` ``[N, H, d]`` and an output gradient."""
    shape = (num_nodes, HEADS, CHANNELS)
    qkv = [torch.randn(shape, generator=generator).requires_grad_() for _ in range(3)]
    return [*qkv, torch.randn(shape, generator=generator)]


def fwd_bwd(attention: Callable[[], Tensor], grad: Tensor, leaves: list[Tensor]) -> Step:
    def step() -> None:
        for leaf in leaves:
            leaf.grad = None
        attention().backward(grad)

    return step


def packed(sizes: Tensor, block: int) -> tuple[Layout, Tensor]:
    """The pack layout padded to whole blocks, and the first slot of each graph."""
    starts, length = packed_graph_starts(sizes.tolist(), block)
    layout = pack_layout(sizes.tolist(), block, torch.device("cpu"))
    return slot_layout(layout.node_slot, math.ceil(length / block) * block), torch.tensor(starts)


def flat_rows(node_graph: Tensor, start: Tensor, sizes: Tensor) -> tuple[Tensor, int]:
    """structure.py's flat per-pair rows: pair (q, kv) of one graph is row ``flat_row[q] + kv``."""
    offsets = sizes * sizes
    offsets = offsets.cumsum(0) - offsets
    safe = node_graph.clamp(min=0)
    slot = torch.arange(node_graph.numel())
    row = offsets[safe] + (slot - start[safe]) * sizes[safe] - start[safe]
    return torch.where(node_graph >= 0, row, 0), int((sizes * sizes).sum())


# ------------------------------------------------------------------------------ global steps
def global_dense(sizes: Tensor, block: int, inputs: list[Tensor], bias: Tensor | None) -> Step:
    query, key, value, grad = inputs
    layout, start = packed(sizes, block)
    graph, node = torch.repeat_interleave(torch.arange(sizes.numel()), sizes), layout.node_of_slot
    node_graph = torch.where(node >= 0, graph[node.clamp(min=0)], -1)  # [S], -1 = padding
    flat_row, flat_size = flat_rows(node_graph, start, sizes)

    def same_graph(b, h, q, kv):
        graph = node_graph[q]
        return (graph == node_graph[kv]) & (graph >= 0)

    def flat_index(q, kv):
        return torch.remainder(flat_row[q] + kv, flat_size)

    score_mod = pair_bias(flat_index, bias) if bias is not None else None

    def attention() -> Tensor:
        q, k, v = (layout.to_slots(x) for x in (query, key, value))
        out = dense_block_attention(
            q, k, v, block_size=block, scale=SCALE, score_mod=score_mod, mask_mod=same_graph
        )
        return layout.from_slots(out)

    return fwd_bwd(attention, grad, [query, key, value, *([bias] if bias is not None else [])])


def message_passing(
    src: Tensor, dst: Tensor, num_nodes: int, inputs: list[Tensor], score_mod, mask_mod, leaves
) -> Step:
    """The layer's message-passing backend (:func:`~pyg_mup.nn.backends.message_passing_weights`,
    then the scatter of ``propagate``) over explicit pairs ``src -> dst`` (sorted by dst)."""
    query, key, value, grad = inputs
    # what the backend reads of a structure, for pairs given as they are
    pairs = SimpleNamespace(
        attention_pairs=(src, dst),
        message_passing_indices=(dst.unsqueeze(1), src.unsqueeze(1)),
        pair_row=None,
        seq_dst=num_nodes,
    )

    def attention() -> Tensor:
        alpha = message_passing_weights(query, key, pairs, score_mod, mask_mod, SCALE)
        message = value.index_select(0, src) * alpha.unsqueeze(-1)
        return scatter(message, dst, dim=0, dim_size=num_nodes, reduce="sum")

    return fwd_bwd(attention, grad, [query, key, value, *leaves])


def global_message_passing(sizes: Tensor, inputs: list[Tensor], bias: Tensor | None) -> Step:
    ptr = (sizes.cumsum(0) - sizes).tolist()
    pairs = [
        np.stack(np.meshgrid(np.arange(n) + p, np.arange(n) + p)).reshape(2, -1)
        for n, p in zip(sizes.tolist(), ptr, strict=True)
    ]  # (src, dst), dst-major
    src, dst = torch.from_numpy(np.concatenate(pairs, 1)).long()
    graph = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    flat_row, _ = flat_rows(graph, torch.tensor(ptr), sizes)

    def same_graph(b, h, q, kv):
        return graph[q] == graph[kv]

    def flat_index(q, kv):
        return flat_row[q] + kv

    score_mod = pair_bias(flat_index, bias) if bias is not None else None
    leaves = [bias] if bias is not None else []
    return message_passing(src, dst, graph.numel(), inputs, score_mod, same_graph, leaves)


def global_gps(sizes: Tensor, inputs: list[Tensor]) -> Step:
    query, key, value, grad = inputs
    graph = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)

    def dense(x: Tensor) -> tuple[Tensor, Tensor]:
        batched, mask = to_dense_batch(x.flatten(1), graph)  # [G, M, H·d], [G, M]
        return batched.view(*batched.shape[:2], HEADS, CHANNELS).transpose(1, 2), mask

    def attention() -> Tensor:
        (q, mask), (k, _), (v, _) = dense(query), dense(key), dense(value)
        key_padding = mask[:, None, None, :]  # [G, 1, 1, M]: True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_padding, scale=SCALE)
        return out.transpose(1, 2)[mask]  # [N, H, d]

    return fwd_bwd(attention, grad, [query, key, value])


# ------------------------------------------------------------------------------- local steps
def local_graph(block: int, density: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Unique random (src, dst) pairs inside each block of ``block`` nodes, sorted by dst."""
    blocks = LOCAL_NODES // block
    per_block = max(1, round(density * block * block))
    scores = torch.rand(blocks, block * block, generator=generator)
    entry = scores.topk(per_block, dim=1).indices  # distinct entries per block
    dst = entry // block + torch.arange(blocks).unsqueeze(1) * block
    src = entry % block + torch.arange(blocks).unsqueeze(1) * block
    order = torch.argsort(dst.flatten() * LOCAL_NODES + src.flatten())
    return src.flatten()[order], dst.flatten()[order]


def local_layer(
    block: int, src: Tensor, dst: Tensor, backend: str, edge_dim: int | None, seed: int
) -> Step:
    """``FlexGraphConv`` (local, ``HEADS`` × ``CHANNELS``, no root weight) forward+backward on
    ``backend``: ``'dense'`` on the structure packed into blocks of ``block`` slots (its mask
    and bias rows read the block-diagonal pair look-up), ``'message_passing'`` on the unpacked
    one (what ``layout='auto'`` builds below the threshold). ``edge_dim``: the learned edge
    bias (mods ``mask+bias``)."""
    edge_index = torch.stack([src, dst])
    packed = backend == "dense"
    structure = GraphStructure.build(
        edge_index, LOCAL_NODES, layout="pack" if packed else None,
        block_size=block if packed else None,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    width = HEADS * CHANNELS
    layer = FlexGraphConv(
        width, CHANNELS, heads=HEADS, edge_dim=edge_dim, root_weight=False, backend=backend
    )
    x = torch.randn(LOCAL_NODES, width, generator=generator).requires_grad_()
    edge_attr = None
    if edge_dim is not None:
        edge_attr = torch.randn(src.numel(), edge_dim, generator=generator).requires_grad_()
    grad = torch.randn(LOCAL_NODES, width, generator=generator)

    def attention() -> Tensor:
        return layer(x, edge_attr=edge_attr, structure=structure)

    leaves = [x, *layer.parameters(), *([edge_attr] if edge_attr is not None else [])]
    return fwd_bwd(attention, grad, leaves)
