"""dense_block_attention: equal to a per-query reference, gradcheck, NaN confinement, dtypes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from pyg_mup.graph.layout import packed_block_size, packed_graph_starts
from pyg_mup.nn.dense import dense_block_attention
from pyg_mup.score_mods import compose, pair_bias, sigmoid_gate

MAX_DISTANCE = 3


@dataclass
class Packed:
    """Graphs packed into blocks of slots, with the global-mode tables of structure.py."""

    block_size: int
    slots: int
    node_graph: Tensor  # [S] graph of each slot, -1 = padding
    flat_row: Tensor  # [S] within-graph pair (q, kv) is flat row flat_row[q] + kv
    flat_size: int  # Σ n_g²

    def flat_index(self, q: Tensor, kv: Tensor) -> Tensor:
        return torch.remainder(self.flat_row[q] + kv, self.flat_size)


def pack(sizes: list[int], block_size: int, extra_blocks: int = 0) -> Packed:
    """Next-fit packing by :func:`packed_graph_starts`, padded to whole blocks (plus extras)."""
    starts, length = packed_graph_starts(sizes, block_size)
    slots = (-(-length // block_size) + extra_blocks) * block_size
    node_graph = torch.full((slots,), -1)
    for graph, (first, count) in enumerate(zip(starts, sizes, strict=True)):
        node_graph[first : first + count] = graph
    size, start = torch.tensor(sizes), torch.tensor(starts)
    offsets = size * size
    offsets = offsets.cumsum(0) - offsets
    safe = node_graph.clamp(min=0)
    row = offsets[safe] + (torch.arange(slots) - start[safe]) * size[safe] - start[safe]
    flat_row = torch.where(node_graph >= 0, row, 0)
    return Packed(block_size, slots, node_graph, flat_row, max(int((size * size).sum()), 1))


def learned(packed: Packed, heads: int, generator: torch.Generator, dtype: torch.dtype) -> dict:
    """Per-pair bias and gate tables ``[Σ n_g², H]`` and a distance embedding ``[D + 2, H]``."""

    def draw(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=dtype)

    return {
        "bias": draw(packed.flat_size, heads),
        "gate": draw(packed.flat_size, heads),
        "distance": draw(MAX_DISTANCE + 2, heads),
    }


def fixed(packed: Packed, generator: torch.Generator) -> dict:
    """Hop distances per pair, a random pair mask and a random key mask (so some queries
    have no allowed key at all)."""
    return {
        "distance": torch.randint(0, MAX_DISTANCE + 2, (packed.flat_size,), generator=generator),
        "pair": torch.rand(packed.flat_size, generator=generator) < 0.7,
        "key": torch.rand(packed.slots, generator=generator) < 0.8,
    }


def make_mods(packed: Packed, params: dict, tables: dict, mods: frozenset):
    """The score and mask mods of a global layer, built like structure.py and score_mods.py."""
    index = packed.flat_index
    embedding, distance = params["distance"], tables["distance"]

    def add_distance(score, b, h, q, kv):
        return score + embedding[distance[index(q, kv)], h]

    score_mod = compose(
        pair_bias(index, params["bias"]) if "bias" in mods else None,
        sigmoid_gate(index, params["gate"]) if "gate" in mods else None,
        add_distance if "distance" in mods else None,
    )
    node_graph, pair, key = packed.node_graph, tables["pair"], tables["key"]

    def mask_mod(b, h, q, kv):
        graph = node_graph[q]
        keep = (graph == node_graph[kv]) & (graph >= 0)
        if "mask" in mods:
            keep = keep & pair[index(q, kv)] & key[kv]
        return keep

    return score_mod, mask_mod


def reference(query, key, value, scale, score_mod, mask_mod) -> Tensor:
    """Each query over all S keys (not blocks), with the message-passing index shapes
    (``[S, 1]`` slots, ``[1, H]`` heads) and an explicit softmax over the allowed keys."""
    slots, heads, _ = query.shape
    kv = torch.arange(slots).unsqueeze(1)
    head = torch.arange(heads).unsqueeze(0)
    rows = []
    for q in range(slots):
        q_index = torch.full_like(kv, q)
        batch = torch.zeros_like(kv)
        score = (query[q] * key).sum(-1) * scale  # [S, H]
        if score_mod is not None:
            score = score_mod(score, batch, head, q_index, kv)
        keep = mask_mod(batch, head, q_index, kv).expand(slots, heads)
        per_head = []
        for h in range(heads):
            allowed = keep[:, h].nonzero().squeeze(1)
            if allowed.numel() == 0:
                per_head.append(value.new_zeros(value.size(-1)))
            else:
                weight = torch.softmax(score[allowed, h], dim=0)
                per_head.append(weight @ value[allowed, h])
        rows.append(torch.stack(per_head))
    return torch.stack(rows)


def qkv(packed: Packed, heads: int, channels: int, generator, dtype=torch.float32):
    return [
        torch.randn(packed.slots, heads, channels, generator=generator, dtype=dtype)
        for _ in range(3)
    ]


MODS = st.sets(st.sampled_from(["bias", "gate", "distance", "mask"])).map(frozenset)


@st.composite
def batches(draw, max_block: int = 16):
    """Block size, graph sizes that fit in a block (one-node graphs included), extra
    padding blocks."""
    block_size = draw(st.sampled_from([b for b in (1, 4, 8, 16) if b <= max_block]))
    sizes = draw(st.lists(st.integers(1, block_size), min_size=1, max_size=6))
    return block_size, sizes, draw(st.integers(0, 1))


# --------------------------------------------------------------------------------- equality
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=batches(),
    heads=st.integers(1, 3),
    channels=st.integers(1, 5),
    mods=MODS,
    seed=st.integers(0, 2**16),
)
def test_equals_per_query_reference(batch, heads, channels, mods, seed):
    block_size, sizes, extra_blocks = batch
    generator = torch.Generator().manual_seed(seed)
    packed = pack(sizes, block_size, extra_blocks)
    query, key, value = qkv(packed, heads, channels, generator)
    score_mod, mask_mod = make_mods(
        packed, learned(packed, heads, generator, torch.float32), fixed(packed, generator), mods
    )
    out = dense_block_attention(
        query,
        key,
        value,
        block_size=block_size,
        scale=0.7,
        score_mod=score_mod,
        mask_mod=mask_mod,
    )
    expected = reference(query, key, value, 0.7, score_mod, mask_mod)
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-5)
    padding = packed.node_graph < 0
    assert torch.equal(out[padding], torch.zeros_like(out[padding]))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(max_block=8), heads=st.integers(1, 2), mods=MODS, seed=st.integers(0, 2**16))
def test_gradcheck_float64(batch, heads, mods, seed):
    block_size, sizes, extra_blocks = batch
    generator = torch.Generator().manual_seed(seed)
    packed = pack(sizes, block_size, extra_blocks)
    tables = fixed(packed, generator)
    params = learned(packed, heads, generator, torch.float64)
    names = sorted(params)
    inputs = [*qkv(packed, heads, 2, generator, torch.float64), *(params[n] for n in names)]
    inputs = [t.requires_grad_() for t in inputs]

    def attention(query, key, value, *tensors):
        params = dict(zip(names, tensors, strict=True))
        score_mod, mask_mod = make_mods(packed, params, tables, mods)
        return dense_block_attention(
            query,
            key,
            value,
            block_size=block_size,
            scale=0.5,
            score_mod=score_mod,
            mask_mod=mask_mod,
        )

    assert torch.autograd.gradcheck(attention, inputs, fast_mode=True)


def test_gradcheck_full_jacobian_with_every_mod():
    generator = torch.Generator().manual_seed(5)
    packed = pack([3, 1, 4, 2, 5], 8)  # several graphs per block, a one-node graph, padding
    tables = fixed(packed, generator)
    params = learned(packed, 2, generator, torch.float64)
    names = sorted(params)
    inputs = [*qkv(packed, 2, 2, generator, torch.float64), *(params[n] for n in names)]
    inputs = [t.requires_grad_() for t in inputs]
    every = frozenset({"bias", "gate", "distance", "mask"})

    def attention(query, key, value, *tensors):
        params = dict(zip(names, tensors, strict=True))
        score_mod, mask_mod = make_mods(packed, params, tables, every)
        return dense_block_attention(
            query, key, value, block_size=8, scale=0.5, score_mod=score_mod, mask_mod=mask_mod
        )

    assert torch.autograd.gradcheck(attention, inputs)


# ----------------------------------------------------------------------- rows with no key
def test_rows_without_keys_are_zero_with_finite_gradients():
    packed = pack([3, 2], 8)
    generator = torch.Generator().manual_seed(0)
    query, key, value = (t.requires_grad_() for t in qkv(packed, 2, 4, generator))
    node_graph = packed.node_graph

    def graph_zero_only(b, h, q, kv):  # graph 1 and padding attend nothing
        return (node_graph[q] == 0) & (node_graph[kv] == 0)

    options = {"block_size": 8, "scale": 1.0, "mask_mod": graph_zero_only}
    out = dense_block_attention(query, key, value, **options)
    assert torch.equal(out[3:], torch.zeros_like(out[3:]))
    assert torch.allclose(out[:3], reference(query, key, value, 1.0, None, graph_zero_only)[:3])
    out.sum().backward()
    for grad in (query.grad, key.grad, value.grad):
        assert grad.isfinite().all()
    assert torch.equal(query.grad[3:], torch.zeros_like(query.grad[3:]))


# ------------------------------------------------------------------------- NaN confinement
@pytest.mark.parametrize("poisoned", ["value", "key_and_value"])
def test_nan_in_one_graph_stays_in_it(poisoned):
    packed = pack([4, 3, 5], 16)  # three graphs in one block
    generator = torch.Generator().manual_seed(1)
    query, key, value = qkv(packed, 2, 4, generator)
    tables = fixed(packed, generator)
    score_mod, mask_mod = make_mods(
        packed, learned(packed, 2, generator, torch.float32), tables, frozenset({"bias", "gate"})
    )

    def attention(key, value):
        return dense_block_attention(
            query, key, value, block_size=16, scale=0.5, score_mod=score_mod, mask_mod=mask_mod
        )

    clean = attention(key, value)
    bad = 5  # a node of graph 1 (slots 4..6)
    value = value.clone()
    value[bad, 0, 1] = float("nan")
    value[bad, 1, 2] = float("inf")
    if poisoned == "key_and_value":
        key = key.clone()
        key[bad] = float("nan")
    out = attention(key, value)
    others = packed.node_graph != 1
    assert torch.equal(out[others], clean[others])
    if poisoned == "key_and_value":  # every query of graph 1 attends node 5: NaN through scores
        assert out[4:7].isnan().all()
    else:  # the non-finite value entries are read as zero
        zeroed = value.clone()
        zeroed[bad] = torch.where(zeroed[bad].isfinite(), zeroed[bad], 0)
        assert torch.allclose(out, attention(key, zeroed))


# -------------------------------------------------------------------------- dtypes, dropout
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    packed = pack([5, 7, 2, 6], 8)
    generator = torch.Generator().manual_seed(2)
    inputs = qkv(packed, 2, 4, generator)
    score_mod, mask_mod = make_mods(
        packed, learned(packed, 2, generator, dtype), fixed(packed, generator), frozenset({"bias"})
    )
    options = {"block_size": 8, "scale": 0.5, "score_mod": score_mod, "mask_mod": mask_mod}
    out = dense_block_attention(*(t.to(dtype) for t in inputs), **options)
    assert out.dtype == dtype
    expected = reference(*(t.double() for t in inputs), 0.5, score_mod, mask_mod)
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-12
    assert torch.allclose(out.double(), expected, atol=tolerance, rtol=tolerance)


def test_dropout_drops_probabilities_and_matches_in_expectation():
    packed = pack([6, 5], 16)
    generator = torch.Generator().manual_seed(3)
    query, key, value = qkv(packed, 2, 4, generator)
    _, mask_mod = make_mods(
        packed, learned(packed, 2, generator, torch.float32), fixed(packed, generator), frozenset()
    )
    options = {"block_size": 16, "scale": 0.5, "mask_mod": mask_mod}
    clean = dense_block_attention(query, key, value, **options)
    assert torch.equal(dense_block_attention(query, key, value, dropout=0.5, **options), clean)
    dropped = dense_block_attention(query, key, value, dropout=1.0, training=True, **options)
    assert torch.equal(dropped, torch.zeros_like(dropped))
    torch.manual_seed(0)
    draws = torch.stack(
        [
            dense_block_attention(query, key, value, dropout=0.3, training=True, **options)
            for _ in range(2000)
        ]
    )
    assert not torch.allclose(draws[0], clean, atol=1e-3)  # a draw differs from the clean output
    assert torch.allclose(draws.mean(0), clean, atol=0.05)


# ---------------------------------------------------------------------- no data-dependent ops
def test_runs_on_meta_tensors():
    """Meta tensors hold no data: an op that reads data (a host sync) would raise."""
    packed = pack([5, 7, 2, 6], 8)
    generator = torch.Generator().manual_seed(4)
    params = {k: v.to("meta") for k, v in learned(packed, 2, generator, torch.float32).items()}
    tables = {k: v.to("meta") for k, v in fixed(packed, generator).items()}
    meta = Packed(8, packed.slots, packed.node_graph.to("meta"), packed.flat_row.to("meta"), 1)
    score_mod, mask_mod = make_mods(meta, params, tables, frozenset({"bias", "gate", "distance"}))
    query, key, value = (t.to("meta").requires_grad_() for t in qkv(packed, 2, 4, generator))
    out = dense_block_attention(
        query, key, value, block_size=8, scale=0.5, score_mod=score_mod, mask_mod=mask_mod
    )
    out.sum().backward()
    assert out.shape == (packed.slots, 2, 4) and query.grad.shape == query.shape


# ------------------------------------------------------------------------- errors, policy
def test_errors_name_the_argument():
    query = torch.randn(12, 2, 4)
    mask = lambda b, h, q, kv: q >= kv  # noqa: E731
    with pytest.raises(ValueError, match="block_size"):
        dense_block_attention(query, query, query, block_size=8, scale=1.0, mask_mod=mask)
    with pytest.raises(ValueError, match="key"):
        dense_block_attention(query, query[:, :1], query, block_size=4, scale=1.0, mask_mod=mask)
    with pytest.raises(ValueError, match="value"):
        dense_block_attention(query, query, query[:8], block_size=4, scale=1.0, mask_mod=mask)
    with pytest.raises(ValueError, match="query"):
        dense_block_attention(query[0], query, query, block_size=4, scale=1.0, mask_mod=mask)


def test_empty_sequence():
    empty = torch.zeros(0, 2, 4)
    out = dense_block_attention(
        empty, empty, empty, block_size=16, scale=1.0, mask_mod=lambda b, h, q, kv: q == kv
    )
    assert out.shape == (0, 2, 4)


@pytest.mark.parametrize(
    ("largest", "block"),
    [
        (0, 16),
        (1, 16),
        (16, 16),
        (17, 32),
        (33, 64),
        (100, 128),
        (128, 128),
        (222, 256),
        (492, 512),
    ],
)
def test_dense_block_size(largest, block):
    assert packed_block_size(largest) == block


def test_dense_block_size_leaves_large_graphs_to_message_passing():
    from pyg_mup.graph import GraphStructure

    assert packed_block_size(512) == 512
    assert packed_block_size(513) == 512  # the graph spans blocks: not dense-ready
    with pytest.raises(ValueError, match="max_graph_size"):
        packed_block_size(-1)
    ring = torch.arange(600)
    edge_index = torch.stack([ring, ring.roll(1)])
    assert not GraphStructure.build(edge_index, 600, mode="global").fits_dense_blocks
    assert GraphStructure.build(edge_index[:, :0], 400, mode="global").fits_dense_blocks
