"""The graph package end to end: stored hop distances, structures built in the loader, moves,
and the reliability cases of bad input (issue 13) that structures and layers catch."""

import re

import pytest
import torch
from graphs import bfs_hop_table, random_batch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader
from torch_geometric.data import Batch, Data

from pyg_mup import FlexGraphConv
from pyg_mup.data import load_dataset
from pyg_mup.graph import (
    AddHopDistance,
    GraphStructure,
    StructureCollater,
    StructuredBatch,
    StructureLoader,
    StructureSpec,
)
from pyg_mup.models import GraphTransformer
from pyg_mup.mup import set_base_shapes
from pyg_mup.nn.attention import MuPFlexAttention

# ------------------------------------------------------------------------------ hop distances


@st.composite
def directed_graphs(draw):
    """Graphs of 0–7 nodes (the last not empty) with random directed edges: loops, parallel edges,
    isolated nodes."""
    graphs = []
    # (a batch ending in an empty graph: test_batch_ending_in_an_empty_graph)
    sizes = draw(st.lists(st.integers(0, 7), min_size=1, max_size=5).filter(lambda s: s[-1]))
    for size in sizes:
        node = st.integers(0, max(size - 1, 0))
        edges = draw(st.lists(st.tuples(node, node), max_size=2 * size))
        edge_index = torch.tensor(edges, dtype=torch.long).reshape(-1, 2).t().contiguous()
        graphs.append(Data(edge_index=edge_index, num_nodes=size))
    return graphs


def _graphs(*edge_lists):
    return [
        Data(edge_index=torch.tensor(edges, dtype=torch.long).reshape(-1, 2).t(), num_nodes=n)
        for n, edges in edge_lists
    ]


@settings(max_examples=30, deadline=None)
@given(
    graphs=directed_graphs(),
    layout=st.sampled_from([None, "pack"]),
    max_distance=st.integers(1, 4),
)
@example(graphs=_graphs((1, [])), layout="pack", max_distance=1)
@example(graphs=_graphs((1, [(0, 0)]), (3, []), (1, [])), layout=None, max_distance=2)
@example(  # a path 0 → … → 6: distances up to 6, capped at max_distance + 1
    graphs=_graphs((2, [(1, 0)]), (7, [(i, i + 1) for i in range(6)]), (1, [])),
    layout="pack",
    max_distance=4,
)
def test_stored_hop_distances_equal_relaxation_and_bfs(graphs, layout, max_distance):
    """AddHopDistance per graph, concatenated by PyG's collate, is the batch's flat table: it
    equals the relaxation passes and networkx BFS (farther and unreachable: max_distance + 1),
    at every (query, key) node pair of a graph, whatever the layout."""
    sizes = [graph.num_nodes for graph in graphs]
    stored = Batch.from_data_list([AddHopDistance()(graph.clone()) for graph in graphs])
    assert torch.equal(stored.hop_distance.long(), bfs_hop_table(stored.edge_index, sizes))
    options = {"mode": "global", "max_distance": max_distance, "layout": layout}
    edge_index, num_nodes, batch = stored.edge_index, stored.num_nodes, stored.batch
    precomputed = GraphStructure.build(
        edge_index, num_nodes, batch, ptr=stored.ptr, hop_distance=stored.hop_distance, **options
    )
    relaxed = GraphStructure.build(edge_index, num_nodes, batch, **options)
    expected = bfs_hop_table(edge_index, sizes, cap=max_distance + 1)
    assert torch.equal(precomputed.flat_distance, expected)
    assert torch.equal(relaxed.flat_distance, expected)

    # the same distances through distance(q, kv) at slots, for every within-graph node pair
    query, key = precomputed.attention_pairs_of_nodes().flip(0)
    slot = torch.arange(num_nodes) if layout is None else precomputed.layout.node_slot
    first = stored.ptr[batch[query]]
    size = stored.ptr[batch[query] + 1] - first
    flat = stored.ptr.new_tensor([0, *[n * n for n in sizes]]).cumsum(0)[batch[query]]
    entry = flat + (query - first) * size + key - first
    for structure in (precomputed, relaxed):
        assert torch.equal(structure.distance(slot[query], slot[key]), expected[entry])


@pytest.mark.parametrize("layout", [None, "pack"])
def test_batch_ending_in_an_empty_graph(layout):
    """PyG's collate of graphs whose last one has no nodes gives ``ptr = [0, 2, 2]``: the
    structure has two graphs, the second empty, and the first one's distances."""
    graphs = _graphs((2, [(0, 1)]), (0, []))
    stored = Batch.from_data_list([AddHopDistance()(graph) for graph in graphs])
    assert stored.ptr.tolist() == [0, 2, 2]
    options = {"mode": "global", "max_distance": 2, "layout": layout}
    built = [
        GraphStructure.build(stored.edge_index, 2, stored.batch, ptr=stored.ptr, **options),
        GraphStructure.build(stored.edge_index, 2, ptr=stored.ptr, **options),
    ]
    if layout == "pack":  # the loader's build: ptr and the stored distances
        built.append(StructureSpec(("global",), max_distance=2).build_batch(stored)["global"])
    for structure in built:
        assert structure.graph_sizes == (2, 0)
        assert structure.flat_distance.tolist() == [0, 3, 1, 0]  # entry i·n + j: hops j → i


# ----------------------------------------------------------------------- structures in loaders
MAX_DISTANCE = 3
NUM_MOLECULES = 48


@pytest.fixture(scope="module")
def molecules(tmp_path_factory):
    """The first molecules of the shipped ESOL with stored hop distances."""
    loaded = load_dataset(
        "ogbg-molesol", cache_dir=tmp_path_factory.mktemp("esol"), pre_transform=AddHopDistance()
    )
    return loaded.dataset[:NUM_MOLECULES]


def _tensors_of(structure):
    """Everything the attention reads, by name (global: the flat tables too)."""
    tensors = {
        "pair_index": structure.pair_index,
        "edge_pair": structure.edge_pair,
        "pair_multiplicity": structure.pair_multiplicity,
        "attention_pairs": structure.attention_pairs,
        "blocks.q": structure.blocks.q,
        "blocks.kv": structure.blocks.kv,
        "blocks.full": structure.blocks.full,
    }
    if structure.layout.node_slot is not None:
        tensors["node_slot"] = structure.layout.node_slot
    if structure.mode == "global":
        for name in ("flat_distance", "node_graph", "flat_row", "edge_flat", "graph_start"):
            tensors[name] = getattr(structure, name)
    return tensors


def _assert_same_structure(got, expected):
    assert type(got) is type(expected)
    assert (got.num_src, got.seq_src, got.block_size) == (
        expected.num_src,
        expected.seq_src,
        expected.block_size,
    )
    if got.mode == "global":
        assert got.graph_sizes == expected.graph_sizes and got.flat_size == expected.flat_size
    got_tensors, expected_tensors = _tensors_of(got), _tensors_of(expected)
    assert got_tensors.keys() == expected_tensors.keys()
    for name, value in expected_tensors.items():
        assert torch.equal(got_tensors[name], value), name


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_structures_equal_direct_builds_and_the_model_output(molecules, num_workers):
    torch.manual_seed(0)
    model = GraphTransformer(
        1, width=16, layers=2, heads=2, attention="both", max_distance=MAX_DISTANCE
    )
    model = set_base_shapes(model, None).eval()
    spec = model.structure_spec("cpu")
    assert spec == StructureSpec(("local", "global"), MAX_DISTANCE, "cpu")
    loader = StructureLoader(molecules, spec, batch_size=16, num_workers=num_workers)
    graphs_seen = 0
    for item in loader:
        assert isinstance(item, StructuredBatch) and set(item.structures) == {"local", "global"}
        batch = item.batch
        assert batch.hop_distance.dtype == torch.uint8  # the stored tables, collated
        graphs_seen += batch.num_graphs
        direct = {  # from the batch alone: no ptr, distances by relaxation
            "local": GraphStructure.build(batch.edge_index, batch.num_nodes),
            "global": GraphStructure.build(
                batch.edge_index,
                batch.num_nodes,
                batch.batch,
                mode="global",
                max_distance=MAX_DISTANCE,
            ),
        }
        for mode, structure in direct.items():
            _assert_same_structure(item.structures[mode], structure)
        inputs = (batch.x, batch.edge_index, batch.edge_attr, batch.batch, batch.num_graphs)
        with torch.no_grad():
            expected = model(*inputs)
            assert torch.equal(model(*inputs, structures=item.structures), expected)
            assert expected.shape == (batch.num_graphs, 1) and expected.isfinite().all()
    assert graphs_seen == NUM_MOLECULES


def test_collater_in_a_plain_dataloader(molecules):
    spec = StructureSpec(("global",), MAX_DISTANCE)
    loader = DataLoader(molecules, batch_size=20, collate_fn=StructureCollater(spec))
    sizes = []
    for item in loader:
        batch = item.batch
        expected = GraphStructure.build(
            batch.edge_index, batch.num_nodes, batch.batch, mode="global", max_distance=3
        )
        _assert_same_structure(item.structures["global"], expected)
        sizes.append(batch.num_graphs)
    assert sizes == [20, 20, 8]


# ------------------------------------------------------------------------------- moving
def _structures(flex=True):
    generator = torch.Generator().manual_seed(1)
    x, edge_index, batch = random_batch([6, 1, 9, 4], 10, generator)
    local = GraphStructure.build(edge_index, x.size(0), max_distance=2, block_size=8, flex=flex)
    glob = GraphStructure.build(
        edge_index, x.size(0), batch, mode="global", max_distance=2, flex=flex
    )
    return x, edge_index, batch, {"local": local, "global": glob}


def _all_tensors(structure):
    """Every tensor a structure holds, by name: fields, nested objects and the block mask."""
    tensors = {}
    for name, value in vars(structure).items():
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, tuple):
            tensors.update(
                (f"{name}[{i}]", t) for i, t in enumerate(value) if isinstance(t, torch.Tensor)
            )
        elif value is not None and not callable(value) and hasattr(value, "__dict__"):
            tensors.update(
                (f"{name}.{inner}", t)
                for inner, t in vars(value).items()
                if isinstance(t, torch.Tensor)
            )
    return tensors


@pytest.mark.parametrize("flex", [False, True])
@pytest.mark.parametrize("mode", ["local", "global"])
@pytest.mark.parametrize("move", ["to", "apply"])
def test_moved_structure_keeps_tensors_and_mods(mode, move, flex):
    x, edge_index, batch, structures = _structures(flex)
    structure = structures[mode]
    moved = structure.to("cpu") if move == "to" else structure.apply(lambda t: t.clone())
    before, after = _all_tensors(structure), _all_tensors(moved)
    assert after.keys() == before.keys()
    required = {"pairs.pair_index", "attention_pairs", "blocks.q", "message_passing_indices[0]"}
    required |= {"pair_distance"} if mode == "local" else {"layout.node_slot", "flat_distance"}
    if flex:
        required |= {"block_mask.kv_indices", "lookup.tiles" if mode == "local" else "flat_row"}
    else:
        assert not any(name.startswith(("block_mask.", "lookup.")) for name in before)
    assert required <= set(before)
    for name, value in before.items():
        assert torch.equal(after[name], value), name
        if move == "apply" and value.numel():
            assert after[name].data_ptr() != value.data_ptr(), name  # really copied
    # the moved structure's mods work and answer as the original's (local ones need flex)
    q, kv = torch.arange(structure.seq_dst)[:, None], torch.arange(structure.seq_src)[None, :]
    if flex or mode == "global":
        assert torch.equal(moved.mask_mod()(0, 0, q, kv), structure.mask_mod()(0, 0, q, kv))
        assert torch.equal(moved.pair_row(q, kv), structure.pair_row(q, kv))
        assert torch.equal(moved.distance(q, kv), structure.distance(q, kv))
    torch.manual_seed(0)
    backend = "flex" if flex else "auto"
    conv = FlexGraphConv(8, 4, heads=2, mode=mode, edge_dim=3, max_distance=2, backend=backend)
    edge_attr = torch.randn(edge_index.size(1), 3)
    options = {"batch": batch} if mode == "global" else {}
    with torch.no_grad():
        expected = conv(x, edge_index, edge_attr, structure=structure, **options)
        assert torch.equal(conv(x, edge_index, edge_attr, structure=moved, **options), expected)
        conv.backend = "message_passing"
        assert torch.allclose(
            conv(x, edge_index, edge_attr, structure=moved, **options), expected, atol=1e-5
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_structures_keep_their_tensors():
    x, edge_index, _, structures = _structures()
    item = StructuredBatch(Batch.from_data_list([Data(x=x, edge_index=edge_index)]), structures)
    pinned = item.pin_memory()
    for mode, structure in structures.items():
        before, after = _all_tensors(structure), _all_tensors(pinned.structures[mode])
        for name, value in before.items():
            assert after[name].is_pinned() and torch.equal(after[name], value), name
    moved = pinned.to("cuda", non_blocking=True)
    assert moved.structures["global"].flat_distance.is_cuda
    assert torch.equal(
        moved.structures["global"].flat_distance.cpu(), structures["global"].flat_distance
    )


# ------------------------------------------------------------------ reliability (issue 13)
def _two_graphs():
    generator = torch.Generator().manual_seed(2)
    return random_batch([5, 4], 6, generator)


def test_global_edge_between_graphs_names_the_edge_and_graphs():
    x, edge_index, batch = _two_graphs()
    crossing = torch.cat([edge_index, torch.tensor([[1], [7]])], 1)  # graph 0 → graph 1
    edge = crossing.size(1) - 1
    message = re.escape(f"edge_index[:, {edge}] = [1, 7] joins graph 0 to graph 1")
    with pytest.raises(ValueError, match=message):
        GraphStructure.build(crossing, x.size(0), batch, mode="global")
    with pytest.raises(ValueError, match=message):
        FlexGraphConv(8, 4, mode="global")(x, crossing, batch=batch)


def test_structure_reused_with_another_batch_raises():
    x, edge_index, batch = _two_graphs()
    conv = FlexGraphConv(8, 4, mode="global")
    single = GraphStructure.build(edge_index, x.size(0), mode="global")
    conv(x, edge_index, structure=single)  # used as built: one graph
    with pytest.raises(ValueError, match="built without batch or ptr, it is one graph"):
        conv(x, edge_index, batch=batch, structure=single)
    for_a = GraphStructure.build(edge_index, x.size(0), batch, mode="global")
    conv(x, edge_index, batch=batch.clone(), structure=for_a)  # an equal batch is the same one
    batch_b = torch.tensor([0] * 5 + [1, 1, 2, 2])
    with pytest.raises(ValueError, match="batch differs"):
        conv(x, edge_index, batch=batch_b, structure=for_a)


def test_structure_built_from_ptr_checks_the_batch_against_its_graphs():
    """``ptr`` stands in for ``batch`` (GraphStructure.build): a structure built from ``ptr``
    alone has the batch's graphs, so the layer accepts the matching ``batch`` and rejects
    another one, rather than calling the structure a single graph."""
    x, edge_index, batch = _two_graphs()
    structure = GraphStructure.build(edge_index, x.size(0), mode="global", ptr=[0, 5, 9])
    assert structure.graph_sizes == (5, 4)
    conv = FlexGraphConv(8, 4, mode="global")
    with torch.no_grad():
        expected = conv(x, edge_index, batch=batch)
        assert torch.allclose(conv(x, edge_index, structure=structure), expected, atol=1e-6)
        assert torch.allclose(
            conv(x, edge_index, batch=batch, structure=structure), expected, atol=1e-6
        )
    with pytest.raises(ValueError, match="batch differs"):
        conv(x, edge_index, batch=torch.tensor([0] * 4 + [1] * 5), structure=structure)


@pytest.mark.parametrize("mode", ["local", "global"])
def test_edge_index_edited_in_place_after_build_raises(mode):
    x, edge_index, batch = _two_graphs()
    structure = GraphStructure.build(edge_index, x.size(0), batch, mode=mode)
    conv = FlexGraphConv(8, 4, mode=mode)
    conv(x, edge_index, batch=batch, structure=structure)
    edge_index[0, 0] = edge_index[1, 0]  # same tensor object, new values
    with pytest.raises(ValueError, match="structure was built for another graph"):
        conv(x, edge_index, batch=batch, structure=structure)


@pytest.mark.parametrize("name", ["heads", "max_distance", "block_size"])
def test_bools_are_not_ints(name):
    with pytest.raises(ValueError, match=f"{name} must be a positive int"):
        FlexGraphConv(8, 4, **{name: True})
    if name == "heads":
        return
    edge_index = torch.tensor([[0, 1], [1, 2]])
    for mode in ("local", "global"):
        with pytest.raises(ValueError, match=f"{name} must be a positive int"):
            GraphStructure.build(edge_index, 3, mode=mode, **{name: True})


@pytest.mark.parametrize("mode", ["local", "global"])
def test_meta_edge_index_is_one_line_naming_it(mode):
    edge_index = torch.tensor([[0, 1], [1, 2]], device="meta")
    for build in (
        lambda: GraphStructure.build(edge_index, 3, mode=mode),
        lambda: FlexGraphConv(8, 4, mode=mode)(torch.randn(3, 8), edge_index),
    ):
        with pytest.raises(ValueError) as error:
            build()
        assert str(error.value).startswith("edge_index is on the meta device")
        assert "\n" not in str(error.value)


def test_float64_x_into_float32_layer_names_x():
    x, edge_index, _ = _two_graphs()
    with pytest.raises(TypeError, match=r"^x has dtype torch.float64 .* torch.float32"):
        FlexGraphConv(8, 4)(x.double(), edge_index)


def test_bipartite_layer_given_one_tensor_asks_for_the_pair():
    conv = FlexGraphConv((8, 6), 4)
    with pytest.raises(TypeError, match=re.escape("in_channels=(8, 6)): pass x as a pair")):
        conv(torch.randn(5, 8), torch.tensor([[0, 1], [1, 2]]))


def test_edge_index_in_place_of_a_structure_names_graph_structure():
    x, edge_index, _ = _two_graphs()
    with pytest.raises(TypeError, match="structure must be a GraphStructure, got Tensor"):
        MuPFlexAttention(8, 4)(x, edge_index)


# --------------------------------------------------------------------- non-finite confinement
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize(
    ("mode", "backends"),
    [("global", ["message_passing", "dense", "flex"]), ("local", ["message_passing", "flex"])],
)
def test_nan_stays_in_its_graph(mode, backends, gated):
    """A NaN in one node of graph 0 reaches the queries that attend to it, on every backend,
    and no node of graphs 1 and 2 (whose outputs are exactly the clean batch's)."""
    generator = torch.Generator().manual_seed(4)
    x, edge_index, batch = random_batch([7, 5, 6], 9, generator)
    edge_attr = torch.randn(edge_index.size(1), 3, generator=generator)
    poisoned = x.clone()
    poisoned[2, 3] = float("nan")
    options = {"edge_dim": 3, "max_distance": 2} if gated else {}
    inputs = {"edge_attr": edge_attr} if gated else {}
    nan_rows = {}
    for backend in backends:
        torch.manual_seed(0)
        conv = FlexGraphConv(8, 4, heads=2, mode=mode, backend=backend, **options).eval()
        with torch.no_grad():
            clean = conv(x, edge_index, batch=batch, **inputs)
            out = conv(poisoned, edge_index, batch=batch, **inputs)
        assert clean.isfinite().all()
        others = batch != 0
        assert torch.equal(out[others], clean[others]), backend
        nan_rows[backend] = out.isnan().any(1)
    if mode == "global":  # every query of graph 0 attends to the NaN node
        expected = batch == 0
    else:  # the node itself (root weight) and the targets of its edges
        expected = torch.zeros_like(batch, dtype=torch.bool)
        expected[2] = True
        expected[edge_index[1, edge_index[0] == 2]] = True
    for backend, rows in nan_rows.items():
        assert torch.equal(rows, expected), backend
