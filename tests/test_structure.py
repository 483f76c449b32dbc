"""GraphStructure: block mask, pair look-ups and distances against dense references."""

import json
import subprocess
import sys

import pytest
import torch
from graphs import dense_distances, random_batch

from pyg_mup import FlexGraphConv
from pyg_mup.graph import GraphStructure
from pyg_mup.graph.lookup import build_pair_lookup
from pyg_mup.graph.tables import SINK_ROWS


@pytest.fixture
def batch_graph():
    generator = torch.Generator().manual_seed(0)
    return random_batch([5, 1, 40, 3, 90, 7, 0, 2], 12, generator)


def _all_pairs(n):
    return torch.arange(n)[:, None], torch.arange(n)[None, :]


def _edge_pair_ids(structure, q, kv):
    """``pair id + 1`` of the edge pair at ``(q, kv)``, 0 where there is none: the local
    look-up, or in global mode the flat per-pair table of pair ids read through ``pair_row``
    (global structures read flat per-graph tables, not a look-up)."""
    if structure.mode == "local":
        return structure.lookup.fn()(q, kv)
    ids = torch.arange(1, structure.num_pairs + 1, dtype=torch.float64).unsqueeze(1)
    table = structure.pair_values(edge_values=ids, no_edge=torch.zeros(1, dtype=torch.float64))
    return table[structure.pair_row(q, kv), 0].long()


@pytest.mark.parametrize("mode", ["local", "global"])
@pytest.mark.parametrize("block_size", [16, 128])
@pytest.mark.parametrize("lookup", ["tiles", "hash"])
def test_lookup_and_mask_match_dense(batch_graph, mode, block_size, lookup):
    x, edge_index, batch = batch_graph
    n = x.size(0)
    structure = GraphStructure.build(
        edge_index,
        n,
        batch,
        mode=mode,
        block_size=block_size,
        lookup=lookup,
        layout=None,
        flex=True,
    )
    if mode == "local":
        assert structure.lookup.kind == lookup
    q, kv = _all_pairs(n)
    dense = torch.zeros(n, n, dtype=torch.bool)
    dense[edge_index[1], edge_index[0]] = True

    pair = _edge_pair_ids(structure, q, kv)
    # global: a pair across graphs is no pair of the flat tables (the mask drops it)
    within = torch.ones(n, n, dtype=torch.bool) if mode == "local" else batch[:, None] == batch
    assert torch.equal((pair > 0)[within], dense[within])
    src, dst = structure.pair_index[:, pair[dense] - 1]
    assert torch.equal(dst, q.expand(n, n)[dense]) and torch.equal(src, kv.expand(n, n)[dense])

    allowed = structure.mask_mod()(0, 0, q, kv)
    expected = dense if mode == "local" else batch[:, None] == batch[None, :]
    assert torch.equal(allowed, expected)

    # every allowed pair lies in a block the BlockMask visits; full blocks hold only allowed pairs
    block_mask = structure.block_mask
    visited = block_mask.to_dense()[0, 0].bool()
    blocks_q, blocks_kv = (q // block_size).expand(n, n), (kv // block_size).expand(n, n)
    assert visited[blocks_q[allowed], blocks_kv[allowed]].all()
    full_num = block_mask.full_kv_num_blocks[0, 0]
    full_idx = block_mask.full_kv_indices[0, 0]
    for block_row in range(full_num.numel()):
        for block_col in full_idx[block_row, : full_num[block_row]].tolist():
            rows = slice(block_row * block_size, (block_row + 1) * block_size)
            cols = slice(block_col * block_size, (block_col + 1) * block_size)
            assert expected[rows, cols].all()


def _eager_lookup(structure, kind):
    """The look-up from ``torch.unique``'s inverse over the pairs' block keys, independently of
    the block lists ``build`` derives it from."""
    size, pair_index = structure.block_size, structure.pair_index
    q_blocks, kv_blocks = (-(-max(n, 1) // size) for n in (structure.seq_dst, structure.seq_src))
    block_key = (pair_index[1] // size) * kv_blocks + pair_index[0] // size
    unique_block, tile_of_pair = torch.unique(block_key, sorted=True, return_inverse=True)
    return build_pair_lookup(
        pair_index,
        structure.seq_src,
        unique_block,
        tile_of_pair + 1,
        unique_block.numel(),
        q_blocks,
        kv_blocks,
        size,
        kind,
    )


def _random_graph(num_nodes, num_edges, seed):
    return torch.randint(
        0, num_nodes, (2, num_edges), generator=torch.Generator().manual_seed(seed)
    )


def _probe_indices(structure, graph, num_nodes):
    """Indices to ask a look-up about: every pair, or for the large random graph the edge pairs
    followed by pairs that are mostly not edges."""
    if graph == "random":
        src, dst = structure.pair_index
        return torch.cat([torch.stack([dst, src]), _random_graph(num_nodes, 20_000, 4)], 1)
    q, kv = _all_pairs(max(structure.seq_dst, structure.seq_src))
    return q.clamp(max=structure.seq_dst - 1), kv.clamp(max=structure.seq_src - 1)


@pytest.mark.parametrize(
    ("graph", "build", "expected_kind"),
    [
        ("batch", {"mode": "local", "block_size": 16, "lookup": "tiles"}, "tiles"),
        ("batch", {"mode": "local", "block_size": 16, "lookup": "hash"}, "hash"),
        ("batch", {"mode": "local", "layout": "rcm", "block_size": 16}, "tiles"),  # auto
        ("random", {"block_size": 128}, "hash"),  # auto: ~one tile per pair is over budget
        ("bipartite", {"block_size": 8, "lookup": "tiles"}, "tiles"),
    ],
)
def test_lookup_only_with_flex_and_the_same_rows_without(batch_graph, graph, build, expected_kind):
    """A structure built with flex=False has no look-up, and its message-passing ``pair_row``
    needs none: the backend's own indices give rows 0..P-1 of its unpadded tables. flex=True
    builds the look-up (the one ``torch.unique``'s inverse gives: same kind, tables and
    answers), and the two structures answer the same pairs."""
    if graph == "batch":
        x, edge_index, batch = batch_graph
        num_nodes = x.size(0)
    elif graph == "random":
        num_nodes, batch = 20_000, None
        edge_index = _random_graph(num_nodes, 5000, 1)
    else:
        num_nodes, batch = (13, 6), None
        edge_index = torch.stack([_random_graph(13, 30, 2)[0], _random_graph(6, 30, 3)[0]])
    plain = GraphStructure.build(edge_index, num_nodes, batch, flex=False, **build)
    assert plain.lookup is None and plain.block_mask is None
    assert plain.lookup_kind == expected_kind
    bound = plain.bind("message_passing")
    q_own, kv_own = bound.message_passing_indices
    rows = bound.pair_row(q_own, kv_own)
    assert torch.equal(rows.squeeze(1), torch.arange(plain.num_pairs))
    ids = torch.arange(plain.num_pairs, dtype=torch.float64).unsqueeze(1)
    assert torch.equal(bound.pair_values(ids), ids)  # no zero and sink rows to skip
    with pytest.raises(ValueError, match=r"flex=True"):  # other indices need the look-up
        bound.pair_row(q_own.clone(), kv_own.clone())

    flex = GraphStructure.build(edge_index, num_nodes, batch, flex=True, **build)
    eager = _eager_lookup(flex, build.get("lookup", "auto"))
    assert flex.lookup.kind == eager.kind == flex.lookup_kind == expected_kind
    # (a hash's slot table may differ: parallel cuckoo insertion lets any of the keys that
    # claim one slot win it)
    names = ("tile_of_block", "tiles") if expected_kind == "tiles" else ("keys",)
    for name in names:
        assert torch.equal(getattr(flex.lookup, name), getattr(eager, name)), name
    src, dst = flex.pair_index
    assert torch.equal(flex.pair_index, plain.pair_index)
    assert torch.equal(flex.lookup.fn()(dst, src), torch.arange(1, flex.num_pairs + 1))
    q, kv = _probe_indices(flex, graph, num_nodes)
    answers = flex.lookup.fn()(q, kv)
    assert torch.equal(answers, eager.fn()(q, kv))
    assert 0 < int((answers == 0).sum()) < answers.numel()
    # the same pairs: flex's pair_row at message passing's indices (as clones: a look-up) reads
    # rows 1..P of its padded tables, as its own message passing does; at every probe, non-pairs
    # read sink rows past P
    assert torch.equal(flex.pair_row(q_own.clone(), kv_own.clone()), rows + 1)
    flex_bound = flex.bind("message_passing")
    assert torch.equal(flex_bound.pair_row(*flex_bound.message_passing_indices), rows + 1)
    assert flex_bound.pair_values(ids).shape == (1 + flex.num_pairs + SINK_ROWS, 1)
    probed = flex.pair_row(q, kv)
    assert torch.equal(probed[answers > 0], answers[answers > 0])
    assert bool((probed[answers == 0] > flex.num_pairs).all())


def test_global_pair_rows_are_the_same_with_and_without_flex(batch_graph):
    """Global structures read flat per-graph tables, never a look-up: the message-passing rows
    (0..Σn²-1 in order) are what ``pair_row`` computes at those indices, with or without flex."""
    x, edge_index, batch = batch_graph
    plain = GraphStructure.build(edge_index, x.size(0), batch, mode="global", flex=False)
    flex = GraphStructure.build(edge_index, x.size(0), batch, mode="global", flex=True)
    assert plain.block_mask is None and flex.block_mask is not None
    assert not hasattr(plain, "lookup") and not hasattr(flex, "lookup")
    for structure in (plain, flex):
        bound = structure.bind("message_passing")
        q_own, kv_own = bound.message_passing_indices
        rows = bound.pair_row(q_own, kv_own)
        assert torch.equal(rows.squeeze(1), torch.arange(structure.flat_size))
        assert torch.equal(structure.pair_row(q_own.clone(), kv_own.clone()), rows)


def test_message_passing_needs_no_lookup():
    """A local layer on message passing reads pair ids only at the backend's own indices, so a
    structure built without the look-up (flex=False, the CPU default) serves it, with or without
    pair-dependent mods, and gives what a structure with the look-up gives."""
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(5))
    edge_index = _random_graph(300, 1200, 5)
    edge_index = torch.unique(edge_index[1] * 300 + edge_index[0])  # no parallel edges
    edge_index = torch.stack([edge_index % 300, edge_index // 300])
    torch.manual_seed(5)
    conv = FlexGraphConv(8, 4, heads=2, backend="message_passing")
    structure = GraphStructure.build(edge_index, 300, block_size=16)
    assert not structure.has_parallel_edges
    assert structure.lookup is None and structure.block_mask is None
    x.requires_grad_(True)
    conv(x, edge_index, structure=structure).square().sum().backward()
    assert structure.lookup is None
    assert x.grad is not None and conv.lin_query.weight.grad is not None
    assert structure.lookup_kind == "tiles"

    # a pair-dependent mod (the edge bias) on message passing's own pair indices needs no
    # look-up either: it gives what a look-up's probes give
    edged = FlexGraphConv(8, 4, heads=2, edge_dim=3, backend="message_passing")
    edge_attr = torch.randn(edge_index.size(1), 3)
    plain = GraphStructure.build(edge_index, 300, block_size=16)
    with_lookup = GraphStructure.build(edge_index, 300, block_size=16, flex=True)
    assert with_lookup.lookup is not None
    with torch.no_grad():
        out = edged(x, edge_index, edge_attr, structure=plain)
        assert plain.lookup is None
        assert torch.equal(out, edged(x, edge_index, edge_attr, structure=with_lookup))
    # called with any other indices, the row index needs the look-up
    q, kv = (index.clone() for index in plain.message_passing_indices)
    with pytest.raises(ValueError, match=r"flex=True"):
        plain.pair_row(q, kv)
    rows = with_lookup.pair_row(q, kv)
    assert torch.equal(rows.squeeze(1), torch.arange(1, plain.num_pairs + 1))
    # the structure's own mask needs it too
    with pytest.raises(ValueError, match=r"flex=True"):
        plain.mask_mod()
    assert with_lookup.block_mask is not None
    # global mode reads flat per-graph tables, never pair ids, whatever the layer's inputs
    batch = torch.arange(300) // 50
    within = edge_index[:, edge_index[0] // 50 == edge_index[1] // 50]
    for flex in (False, True):
        glob = GraphStructure.build(within, 300, batch, mode="global", max_distance=2, flex=flex)
        conv = FlexGraphConv(8, 4, heads=2, mode="global", edge_dim=3, max_distance=2)
        attr = torch.randn(within.size(1), 3)
        conv(x, within, attr, batch=batch, structure=glob).sum().backward()
        assert (glob.block_mask is not None) == flex and not hasattr(glob, "lookup")


def test_multiplicity_counts_parallel_edges():
    edge_index = torch.tensor([[0, 0, 0, 1, 2], [1, 1, 1, 2, 2]])
    structure = GraphStructure.build(edge_index, 3)
    assert structure.has_parallel_edges
    assert structure.pair_index.tolist() == [[0, 1, 2], [1, 2, 2]]
    assert structure.pair_multiplicity.tolist() == [3, 1, 1]
    assert structure.edge_pair.tolist() == [0, 0, 0, 1, 2]


@pytest.mark.parametrize("layout", [None, "pack"])
def test_global_distances_are_bfs_hops_within_graphs(batch_graph, layout):
    x, edge_index, batch = batch_graph
    n = x.size(0)
    structure = GraphStructure.build(
        edge_index, n, batch, mode="global", max_distance=3, layout=layout
    )
    q, kv = _all_pairs(n)
    slot = torch.arange(n) if layout is None else structure.layout.node_slot
    same_graph = batch[:, None] == batch[None, :]
    distance = structure.distance(slot[q], slot[kv])
    assert torch.equal(distance[same_graph], dense_distances(edge_index, n, 3)[same_graph])


@pytest.mark.parametrize("mode", ["local", "global"])
def test_distance_values_gather_and_gradient_equal_indexing(batch_graph, mode):
    """pair_values reads the small distance table through its own autograd function (a matrix
    product backward instead of indexing's serial one): values and gradients as indexing's."""
    x, edge_index, batch = batch_graph
    structure = GraphStructure.build(edge_index, x.size(0), batch, mode=mode, max_distance=3)
    table = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    distance = structure.flat_distance if mode == "global" else structure.pair_distance
    assert distance.numel() == (structure.flat_size if mode == "global" else structure.num_pairs)
    values = structure.pair_values(distance_values=table)
    rows = slice(None) if mode == "global" else slice(1, 1 + structure.num_pairs)  # no padding
    assert torch.equal(values[rows], table[distance])
    weights = torch.randn_like(values)
    (gradient,) = torch.autograd.grad((values * weights).sum(), table)
    expected = torch.zeros_like(table).index_add_(0, distance, weights[rows])
    assert torch.allclose(gradient, expected, atol=1e-12)


def test_edge_distance_overrides_edge_pairs():
    edge_index = torch.tensor([[0, 1, 0, 1], [1, 2, 1, 1]])
    edge_distance = torch.tensor([5, 2, 7, 4])
    local = GraphStructure.build(
        edge_index, 3, max_distance=4, edge_distance=edge_distance, flex=True
    )
    assert local.distance(torch.tensor(1), torch.tensor(0)) == 4  # min(5, 7) capped at 4
    assert local.distance(torch.tensor(2), torch.tensor(1)) == 2
    glob = GraphStructure.build(
        edge_index, 3, mode="global", max_distance=4, edge_distance=edge_distance, layout=None
    )
    assert glob.distance(torch.tensor(2), torch.tensor(0)) == 2  # BFS: 0 → 1 → 2
    assert glob.distance(torch.tensor(1), torch.tensor(1)) == 0  # a self-loop is never farther
    assert glob.distance(torch.tensor(0), torch.tensor(2)) == 5  # unreachable


def test_attention_pairs_cover_each_graph_once(batch_graph):
    x, edge_index, batch = batch_graph
    structure = GraphStructure.build(edge_index, x.size(0), batch, mode="global")
    pairs = structure.attention_pairs_of_nodes()
    sizes = torch.bincount(batch)
    assert pairs.size(1) == int((sizes * sizes).sum())
    assert torch.equal(batch[pairs[0]], batch[pairs[1]])
    assert torch.unique(pairs[1] * x.size(0) + pairs[0]).numel() == pairs.size(1)


def test_bipartite_local_structure():
    edge_index = torch.tensor([[0, 4, 4], [1, 0, 1]])
    structure = GraphStructure.build(edge_index, (5, 2), block_size=4, flex=True)
    assert structure.block_mask.shape[-2:] == (2, 5)
    lookup = structure.lookup.fn()
    assert lookup(torch.tensor(1), torch.tensor(4)) > 0
    assert lookup(torch.tensor(1), torch.tensor(3)) == 0


def test_empty_graph_and_no_edges():
    structure = GraphStructure.build(torch.zeros(2, 0, dtype=torch.long), 4, mode="global")
    assert structure.num_pairs == 0
    assert structure.attention_pairs.size(1) == 16
    assert GraphStructure.build(torch.zeros(2, 0, dtype=torch.long), 0).num_pairs == 0


LARGE_GRAPH_SCRIPT = """
import json, resource, torch
from pyg_mup.graph import GraphStructure
n, e = 200_000, 1_000_000
edge_index = torch.randint(0, n, (2, e), generator=torch.Generator().manual_seed(0))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
structure = GraphStructure.build(edge_index, n, flex=True)
assert structure.block_mask is not None
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"peak_kib": peak, "pairs": structure.num_pairs}))
"""


def test_large_random_graph_builds_with_linear_memory():
    """200k nodes, 1M random edges: an N×N int32 table alone would be 160 GB, so a build that
    materialised any N×N structure could not stay under the bound. (How fast it builds is
    `benchmarks/`' question, not a test's.)"""
    result = subprocess.run(
        [sys.executable, "-c", LARGE_GRAPH_SCRIPT], capture_output=True, text=True, check=True
    )
    stats = json.loads(result.stdout)
    assert stats["peak_kib"] * 1024 < 3e9
    assert stats["pairs"] > 990_000


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"edge_index": torch.zeros(3, 2, dtype=torch.long)},
            ValueError,
            "edge_index must have shape",
        ),
        ({"edge_index": torch.zeros(2, 2)}, TypeError, "edge_index must have dtype"),
        ({"edge_index": torch.tensor([[0], [9]])}, ValueError, "refers to node 9"),
        ({"edge_index": torch.tensor([[-1], [0]])}, ValueError, "negative"),
        # local mode ignores batch: the batch checks are global mode's
        (
            {"batch": torch.tensor([1, 0, 0, 0]), "mode": "global"},
            ValueError,
            "batch must be sorted",
        ),
        (
            {"batch": torch.tensor([0, 0]), "mode": "global"},
            ValueError,
            r"batch must have shape \[num_nodes\]",
        ),
        ({"batch": torch.zeros(4), "mode": "global"}, TypeError, "batch must be an integer"),
        ({"mode": "dense"}, ValueError, "mode must be one of"),
        ({"max_distance": 0}, ValueError, "max_distance must be a positive int"),
        ({"edge_distance": torch.tensor([1])}, ValueError, "edge_distance needs max_distance"),
        ({"lookup": "btree"}, ValueError, "lookup must be one of"),
    ],
)
def test_bad_input_names_the_argument(kwargs, error, match):
    arguments = {"edge_index": torch.tensor([[0, 1], [1, 2]]), "num_nodes": 4}
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        GraphStructure.build(**arguments)


def test_pack_layout_keeps_small_graphs_inside_one_block(batch_graph):
    x, edge_index, batch = batch_graph
    block = 16
    structure = GraphStructure.build(
        edge_index, x.size(0), batch, mode="global", block_size=block, layout="pack", flex=True
    )
    slot = structure.layout.node_slot
    assert torch.equal(structure.layout.node_of_slot[slot], torch.arange(x.size(0)))
    for graph in range(int(batch.max()) + 1):
        slots = slot[batch == graph]
        if 0 < slots.numel() <= block:
            assert (slots // block).unique().numel() == 1
    # in slot space the mask is exactly "same graph"
    q, kv = _all_pairs(structure.seq_dst)
    allowed = structure.mask_mod()(0, 0, q, kv)
    graph_of_slot = structure.node_graph[: structure.seq_dst]
    expected = (graph_of_slot[:, None] == graph_of_slot[None, :]) & (graph_of_slot[:, None] >= 0)
    assert torch.equal(allowed, expected)
    unpacked = GraphStructure.build(
        edge_index, x.size(0), batch, mode="global", block_size=block, layout=None, flex=True
    )
    assert blocks_visited(structure) < blocks_visited(unpacked)


def test_rcm_layout_relabels_edges_and_cuts_blocks():
    generator = torch.Generator().manual_seed(3)
    n = 512
    ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
    shuffle = torch.randperm(n, generator=generator)
    edge_index = shuffle[torch.cat([ring, ring.flip(0)], 1)]
    structure = GraphStructure.build(edge_index, n, block_size=32, layout="rcm", flex=True)
    slot = structure.layout.node_slot
    lookup = structure.lookup.fn()
    assert (lookup(slot[edge_index[1]], slot[edge_index[0]]) > 0).all()
    assert lookup(slot[edge_index[1]], slot[(edge_index[0] + 1) % n]).count_nonzero() < 10
    plain = GraphStructure.build(edge_index, n, block_size=32, flex=True)
    assert blocks_visited(structure) * 4 < blocks_visited(plain)


def blocks_visited(structure):
    mask = structure.block_mask
    total = mask.kv_num_blocks.sum()
    if mask.full_kv_num_blocks is not None:
        total = total + mask.full_kv_num_blocks.sum()
    return int(total)


@pytest.mark.parametrize(
    ("num_nodes", "kwargs", "match"),
    [
        (4, {"layout": "rcm", "mode": "global"}, "layout must be None or 'pack' in mode='global'"),
        ((4, 3), {"layout": "rcm"}, "layout='rcm' reorders one node set"),
        ((4, 3), {"layout": "pack"}, "layout='pack' reorders one node set"),
        (4, {"layout": "metis"}, "layout must be None or .rcm. in mode=.local., or .pack./.auto."),
        (4, {"layout": "metis", "mode": "global"}, "layout must be None or 'pack'"),
    ],
)
def test_bad_layout(num_nodes, kwargs, match):
    with pytest.raises(ValueError, match=match):
        GraphStructure.build(torch.tensor([[0, 1], [1, 2]]), num_nodes, **kwargs)
