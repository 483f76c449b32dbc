"""Local attention on the blocked dense backend: equal to message passing; when auto picks it."""

from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.nn import Parameter

from pyg_mup import GraphStructure, MuPFlexAttention
from pyg_mup.graph.blocks import DENSE_MIN_BLOCK_DENSITY
from pyg_mup.graph.layout import MAX_DENSE_BLOCK, edge_segments
from pyg_mup.nn import FlexGraphConv
from pyg_mup.nn.backends import resolve_backend

NUM_TYPES, MAX_DISTANCE = 3, 2


@st.composite
def local_batches(draw, max_graphs: int = 4, max_size: int = 7):
    """``(sizes, edge_index)``: graphs of 1..max_size nodes, each with random edges inside it
    (self-loops and parallel edges drawn like any edge, some graphs without edges, so isolated
    nodes), in node order; possibly no edge at all."""
    sizes = draw(st.lists(st.integers(1, max_size), min_size=1, max_size=max_graphs))
    edges, offset = [], 0
    for size in sizes:
        count = draw(st.integers(0, 2 * size * size))
        for _ in range(count):
            src, dst = draw(st.integers(0, size - 1)), draw(st.integers(0, size - 1))
            edges.append((offset + src, offset + dst))
        offset += size
    edge_index = torch.tensor(edges, dtype=torch.long).t().reshape(2, -1)
    return sizes, edge_index


def structures(edge_index: Tensor, num_nodes: int, **options) -> tuple:
    """The packed structure the dense backend runs on, and the unpacked one of message passing."""
    packed = GraphStructure.build(edge_index, num_nodes, layout="pack", **options)
    plain = GraphStructure.build(edge_index, num_nodes, layout=None, **options)
    assert packed.fits_dense_blocks and not plain.fits_dense_blocks
    return packed, plain


def twin_layers(dtype: torch.dtype, seed: int, **options) -> tuple[FlexGraphConv, FlexGraphConv]:
    torch.manual_seed(seed)
    dense = FlexGraphConv(6, 3, heads=2, backend="dense", **options).to(dtype)
    for name, parameter in dense.named_parameters():
        if not name.startswith(("lin_key", "lin_query", "lin_value", "lin_skip")):
            torch.nn.init.normal_(parameter)  # biases and gate logits start at 0: make them count
    twin = FlexGraphConv(6, 3, heads=2, backend="message_passing", **options).to(dtype)
    twin.load_state_dict(dense.state_dict())
    return dense, twin


FEATURES = st.sampled_from(["plain", "edge_bias", "gates", "all"])


def layer_options(features: str) -> dict:
    return {
        "plain": {},
        "edge_bias": {"edge_dim": 4},
        "gates": {"num_edge_types": NUM_TYPES, "max_distance": MAX_DISTANCE},
        "all": {"edge_dim": 4, "num_edge_types": NUM_TYPES, "max_distance": MAX_DISTANCE},
    }[features]


def edge_inputs(layer: FlexGraphConv, num_edges: int, generator, dtype) -> dict:
    inputs = {}
    if layer.edge_dim:
        inputs["edge_attr"] = torch.randn(num_edges, layer.edge_dim, generator=generator)
        inputs["edge_attr"] = inputs["edge_attr"].to(dtype)
    if layer.num_edge_types:
        inputs["edge_type"] = torch.randint(0, NUM_TYPES, (num_edges,), generator=generator)
    return inputs


# --------------------------------------------------------------------------------- equality
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=local_batches(), features=FEATURES, seed=st.integers(0, 2**16))
@example(batch=([1], torch.zeros(2, 0, dtype=torch.long)), features="all", seed=0)
@example(batch=([3, 1, 2], torch.tensor([[0, 0, 2, 5], [1, 1, 2, 4]])), features="all", seed=1)
def test_dense_equals_message_passing(batch, features, seed):
    """Outputs and every gradient agree to 1e-5 in float32: parallel edges (counted by the
    log-sum-exp pair bias), self-loops, one-node graphs, isolated nodes, no edges at all."""
    sizes, edge_index = batch
    num_nodes = sum(sizes)
    generator = torch.Generator().manual_seed(seed)
    options = layer_options(features)
    dense, twin = twin_layers(torch.float32, seed, **options)
    packed, plain = structures(edge_index, num_nodes, max_distance=options.get("max_distance"))
    inputs = edge_inputs(dense, edge_index.size(1), generator, torch.float32)
    x = torch.randn(num_nodes, 6, generator=generator, requires_grad=True)
    grad = torch.randn(num_nodes, 6, generator=generator)

    outputs, grads = [], []
    for layer, structure in ((dense, packed), (twin, plain)):
        x.grad = None
        out = layer(x, edge_index, structure=structure, **inputs)
        out.backward(grad)
        outputs.append(out)
        grads.append([x.grad, *(p.grad for p in layer.parameters())])
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    for mine, theirs in zip(*grads, strict=True):
        assert (mine is None) == (theirs is None)
        if mine is not None:
            assert torch.allclose(mine, theirs, atol=1e-5, rtol=1e-5)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=local_batches(max_graphs=3, max_size=4), seed=st.integers(0, 2**16))
def test_gradcheck_float64(batch, seed):
    sizes, edge_index = batch
    num_nodes = sum(sizes)
    generator = torch.Generator().manual_seed(seed)
    dense, _ = twin_layers(torch.float64, seed, **layer_options("all"))
    packed, _ = structures(edge_index, num_nodes, max_distance=MAX_DISTANCE)
    edge_type = torch.randint(0, NUM_TYPES, (edge_index.size(1),), generator=generator)
    x = torch.randn(num_nodes, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    edge_attr = torch.randn(edge_index.size(1), 4, generator=generator, dtype=torch.float64)
    edge_attr.requires_grad_()
    names = [name for name, _ in dense.named_parameters()]

    def attention(x, edge_attr, *params):
        state = dict(zip(names, params, strict=True))
        return torch.func.functional_call(
            dense,
            state,
            (x,),
            {"edge_attr": edge_attr, "edge_type": edge_type, "structure": packed},
        )

    params = [p.detach().clone().requires_grad_() for p in dense.parameters()]
    assert torch.autograd.gradcheck(attention, (x, edge_attr, *params), fast_mode=True)


class CutoffAttention(MuPFlexAttention):
    """A custom subclass: a learned per-head decay with the hop distance (read through the
    structure), and a mask from per-node data captured in slot order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decay = Parameter(torch.linspace(0.5, 1.5, self.heads))

    def score_mod(self, structure, keep):
        decay, distance = self.decay, structure.distance

        def decayed(score, b, h, q, kv):
            return score - decay[h] * distance(q, kv)

        return decayed

    def mask_mod(self, structure, keep):
        def kept(b, h, q, kv):
            return keep[kv]

        return kept


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=local_batches(), seed=st.integers(0, 2**16))
def test_custom_subclass_mods_on_both_backends(batch, seed):
    sizes, edge_index = batch
    num_nodes = sum(sizes)
    generator = torch.Generator().manual_seed(seed)
    packed, plain = structures(edge_index, num_nodes, max_distance=1)
    torch.manual_seed(seed)
    dense = CutoffAttention(6, 3, heads=2, backend="dense")
    twin = CutoffAttention(6, 3, heads=2, backend="message_passing")
    twin.load_state_dict(dense.state_dict())
    x = torch.randn(num_nodes, 6, generator=generator)
    keep = torch.rand(num_nodes, generator=generator) < 0.7
    out = dense(x, packed, keep=packed.to_slots(keep))
    expected = twin(x, plain, keep=keep)
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    expected.sum().backward()
    assert torch.allclose(dense.decay.grad, twin.decay.grad, atol=1e-5, rtol=1e-5)


def test_attention_weights_of_a_packed_structure_are_per_edge():
    """Weights come from message passing over the packed slots, returned per input edge."""
    edge_index = torch.tensor([[0, 1, 1, 2, 3, 3], [1, 0, 0, 2, 4, 3]])
    packed, plain = structures(edge_index, 5)
    layer = FlexGraphConv(6, 3, heads=2)
    x = torch.randn(5, 6)
    out, (edges, alpha) = layer(x, edge_index, structure=packed, return_attention_weights=True)
    expected, (_, expected_alpha) = layer(
        x, edge_index, structure=plain, return_attention_weights=True
    )
    assert torch.equal(edges, edge_index)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(alpha, expected_alpha, atol=1e-6)


# ---------------------------------------------------------------------------------- 'auto'
def complete_graphs(sizes: list[int]) -> Tensor:
    edges, offset = [], 0
    for size in sizes:
        node = torch.arange(size) + offset
        edges.append(torch.cartesian_prod(node, node).t())
        offset += size
    return torch.cat(edges, 1)


def rings(sizes: list[int]) -> Tensor:
    edges, offset = [], 0
    for size in sizes:
        node = torch.arange(size) + offset
        edges.append(
            torch.cat([torch.stack([node, node.roll(1)]), torch.stack([node.roll(1), node])], 1)
        )
        offset += size
    return torch.cat(edges, 1)


def test_auto_packs_dense_local_structures_on_the_cpu():
    sizes = [9, 12, 5, 16, 3]
    dense = GraphStructure.build(complete_graphs(sizes), sum(sizes))
    assert dense.layout.node_slot is not None and dense.fits_dense_blocks
    assert dense.block_size == 16  # the smallest packed block holding the largest graph
    assert dense.block_density >= DENSE_MIN_BLOCK_DENSITY
    probe = torch.zeros(0, 2, 4)
    assert resolve_backend("auto", probe, dense, need_weights=False, dropout=False) == "dense"
    assert resolve_backend("auto", probe, dense, need_weights=False, dropout=True) == "dense"
    assert resolve_backend("auto", probe, dense, need_weights=True, dropout=False) == (
        "message_passing"
    )
    # molecule-like rings fill ~2/B of each row: message passing, no layout (no slot copies)
    sparse = GraphStructure.build(rings(sizes), sum(sizes))
    assert sparse.layout.node_slot is None and not sparse.fits_dense_blocks
    assert sparse.block_size == 128
    assert resolve_backend("auto", probe, sparse, need_weights=False, dropout=False) == (
        "message_passing"
    )
    # a forced packing that is too sparse keeps message passing under 'auto'
    forced = GraphStructure.build(rings(sizes), sum(sizes), layout="pack")
    assert forced.fits_dense_blocks and forced.block_density < DENSE_MIN_BLOCK_DENSITY
    assert resolve_backend("auto", probe, forced, need_weights=False, dropout=False) == (
        "message_passing"
    )


def test_auto_keeps_flex_and_cuda_structures_unpacked():
    sizes = [9, 12]
    edge_index = complete_graphs(sizes)
    assert GraphStructure.build(edge_index, 21, flex=True).layout.node_slot is None
    assert GraphStructure.build(edge_index, 21, target="cuda").layout.node_slot is None
    bipartite = GraphStructure.build(edge_index, (21, 21))
    assert bipartite.layout.node_slot is None
    # a graph larger than the largest dense block spans blocks: not packed
    big = complete_graphs([MAX_DENSE_BLOCK + 8])
    assert not GraphStructure.build(big, MAX_DENSE_BLOCK + 8).fits_dense_blocks


def test_auto_layer_on_dense_graphs_equals_message_passing():
    sizes = [9, 12, 5]
    edge_index = complete_graphs(sizes)
    x = torch.randn(sum(sizes), 6)
    dense, twin = twin_layers(torch.float32, 0)
    dense.backend = "auto"
    assert torch.allclose(dense(x, edge_index), twin(x, edge_index), atol=1e-5)


def test_packed_structure_moves_and_pickles():
    edge_index = complete_graphs([4, 6])
    packed = GraphStructure.build(edge_index, 10, layout="pack")
    for copy in (packed.to("cpu"), pickle.loads(pickle.dumps(packed))):
        assert copy.fits_dense_blocks
        assert torch.equal(copy.dense_lookup.rows, packed.dense_lookup.rows)
        x = torch.randn(10, 6)
        layer, _ = twin_layers(torch.float32, 0)
        assert torch.allclose(layer(x, structure=copy), layer(x, structure=packed))


def test_dense_backend_needs_a_packed_structure():
    layer = FlexGraphConv(6, 3, heads=2, backend="dense")
    edge_index = complete_graphs([4])
    with pytest.raises(ValueError, match="layout='pack'"):
        layer(torch.randn(4, 6), structure=GraphStructure.build(edge_index, 4, layout=None))
    with pytest.raises(ValueError, match="bipartite"):
        GraphStructure.build(edge_index, (4, 4), layout="pack")


# ------------------------------------------------------------------------------- segments
def test_edge_segments_split_where_no_edge_crosses():
    edge_index = torch.tensor([[0, 2, 5, 6, 9], [1, 0, 5, 8, 7]])
    # 0-1-2 joined, 3 and 4 isolated, 5 a self-loop, 6-7-8 joined by 6→8 and 9→7
    assert edge_segments(edge_index, 10) == [3, 1, 1, 1, 4]
    assert edge_segments(edge_index[:, :0], 3) == [1, 1, 1]
    assert edge_segments(edge_index[:, :0], 0) == []
