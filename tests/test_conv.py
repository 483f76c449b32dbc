"""FlexGraphConv: TransformerConv equivalence, backend agreement, and PyG's conv-layer bar."""

import pytest
import torch
from graphs import random_batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_geometric.nn import TransformerConv
from torch_geometric.utils import scatter, to_torch_coo_tensor, to_torch_csc_tensor

from pyg_mup import FlexGraphConv, GraphStructure

GATED = {"edge_dim": 3, "num_edge_types": 4, "max_distance": 3}


def _copy_from_transformer(conv: FlexGraphConv, reference: TransformerConv) -> None:
    ours = conv.state_dict()
    conv.load_state_dict({k: v for k, v in reference.state_dict().items() if k in ours})
    assert set(ours) <= set(reference.state_dict())


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Non-zero biases and gates, so that every mod changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))


def _twins(seed: int = 0, **kwargs) -> tuple[FlexGraphConv, FlexGraphConv]:
    message_passing = FlexGraphConv(backend="message_passing", **kwargs)
    _randomize(message_passing, seed)
    flex = FlexGraphConv(backend="flex", **kwargs)
    flex.load_state_dict(message_passing.state_dict())
    return message_passing, flex


def _edge_inputs(edge_index, generator):
    num_edges = edge_index.size(1)
    return {
        "edge_attr": torch.randn(num_edges, 3, generator=generator),
        "edge_type": torch.randint(0, 4, (num_edges,), generator=generator),
    }


# ----------------------------------------------------------------- TransformerConv equivalence
@pytest.mark.parametrize("backend", ["message_passing", "flex"])
@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("root_weight", [True, False])
def test_matches_transformer_conv(backend, concat, root_weight):
    generator = torch.Generator().manual_seed(1)
    # parallel edges, self-loops, and nodes 27..29 isolated (no incoming edges)
    x, edge_index, _ = random_batch([27], 90, generator)
    x = torch.cat([x, torch.randn(3, 8, generator=generator)])
    reference = TransformerConv(8, 4, heads=3, concat=concat, root_weight=root_weight)
    conv = FlexGraphConv(8, 4, heads=3, concat=concat, root_weight=root_weight, backend=backend)
    _copy_from_transformer(conv, reference)
    with torch.no_grad():
        expected = reference(x, edge_index)
        assert torch.allclose(conv(x, edge_index), expected, atol=1e-5)


@pytest.mark.parametrize("backend", ["message_passing", "flex"])
def test_matches_transformer_conv_bipartite(backend):
    generator = torch.Generator().manual_seed(2)
    x_src, x_dst = torch.randn(9, 6, generator=generator), torch.randn(5, 4, generator=generator)
    edge_index = torch.stack(
        [
            torch.randint(0, 9, (25,), generator=generator),
            torch.randint(0, 4, (25,), generator=generator),
        ]
    )  # target node 4 has no incoming edge
    edge_index = torch.cat([edge_index, edge_index[:, :4]], 1)
    reference = TransformerConv((6, 4), 3, heads=2)
    conv = FlexGraphConv((6, 4), 3, heads=2, backend=backend)
    _copy_from_transformer(conv, reference)
    with torch.no_grad():
        out = conv((x_src, x_dst), edge_index)
        assert out.shape == (5, 6)
        assert torch.allclose(out, reference((x_src, x_dst), edge_index), atol=1e-5)


# ------------------------------------------------------------------ flex == message passing
graph_sizes = st.lists(st.integers(1, 14), min_size=1, max_size=5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=graph_sizes,
    edges_per_graph=st.integers(0, 30),
    mode=st.sampled_from(["local", "global"]),
    gated=st.booleans(),
    block_size=st.sampled_from([8, 128]),
    seed=st.integers(0, 2**16),
)
def test_flex_equals_message_passing(sizes, edges_per_graph, mode, gated, block_size, seed):
    generator = torch.Generator().manual_seed(seed)
    x, edge_index, batch = random_batch(sizes, edges_per_graph, generator)
    options = GATED if gated else {}
    message_passing, flex = _twins(
        seed, in_channels=8, out_channels=4, heads=2, mode=mode, block_size=block_size, **options
    )
    inputs = _edge_inputs(edge_index, generator) if gated else {}
    structure = GraphStructure.build(
        edge_index,
        x.size(0),
        batch,
        mode=mode,
        block_size=block_size,
        max_distance=options.get("max_distance"),
        flex=True,
    )
    with torch.no_grad():
        expected = message_passing(x, edge_index, batch=batch, structure=structure, **inputs)
        out = flex(x, edge_index, batch=batch, structure=structure, **inputs)
    assert torch.allclose(out, expected, atol=1e-5)


def test_edge_bias_counts_each_parallel_edge():
    """The pair bias is the log-sum-exp over parallel edges: a per-edge softmax, written out."""
    generator = torch.Generator().manual_seed(3)
    x, edge_index, _ = random_batch([12], 40, generator)
    edge_attr = torch.randn(edge_index.size(1), 3, generator=generator)
    conv = FlexGraphConv(8, 4, heads=2, edge_dim=3, backend="message_passing", root_weight=False)
    _randomize(conv, 3)
    src, dst = edge_index
    query = conv.lin_query(x).view(-1, 2, 4)
    key, value = conv.lin_key(x).view(-1, 2, 4), conv.lin_value(x).view(-1, 2, 4)
    score = (query[dst] * key[src]).sum(-1) / 2.0 + conv.lin_edge(edge_attr)
    weight = torch.exp(score - scatter(score, dst, 0, 12, reduce="max")[dst])
    weight = weight / scatter(weight, dst, 0, 12)[dst]
    expected = scatter(value[src] * weight.unsqueeze(-1), dst, 0, 12).view(12, 8)
    with torch.no_grad():
        assert torch.allclose(conv(x, edge_index, edge_attr), expected, atol=1e-5)
        _, flex = _twins(3, in_channels=8, out_channels=4, heads=2, edge_dim=3, root_weight=False)
        flex.load_state_dict(conv.state_dict())
        assert torch.allclose(flex(x, edge_index, edge_attr), expected, atol=1e-5)


# ------------------------------------------------------------------------------ the PyG bar
def test_repr_and_output_shapes():
    x, edge_index, _ = random_batch([10], 20, torch.Generator().manual_seed(0))
    conv = FlexGraphConv(8, 4, heads=3)
    assert repr(conv) == "FlexGraphConv(8, 4, heads=3, mode='local')"
    assert repr(FlexGraphConv(8, 4, mode="global", **GATED)) == (
        "FlexGraphConv(8, 4, heads=1, mode='global', edge_dim=3, num_edge_types=4, max_distance=3)"
    )
    assert conv(x, edge_index).shape == (10, 12)
    assert FlexGraphConv(8, 4, heads=3, concat=False)(x, edge_index).shape == (10, 4)


@pytest.mark.parametrize("layout", ["csc", "coo", "csr"])
def test_sparse_adjacency_gives_same_output(layout):
    generator = torch.Generator().manual_seed(4)
    x, edge_index, _ = random_batch([11], 30, generator)
    edge_index = torch.unique(edge_index, dim=1)  # sparse layouts coalesce duplicates
    edge_attr = torch.randn(edge_index.size(1), 3, generator=generator)
    conv = FlexGraphConv(8, 4, heads=2, edge_dim=3)
    _randomize(conv, 4)
    if layout == "csc":
        adj_t = to_torch_csc_tensor(edge_index, size=(11, 11)).t()
    elif layout == "coo":
        adj_t = to_torch_coo_tensor(edge_index.flip(0), size=(11, 11))
    else:
        adj_t = to_torch_coo_tensor(edge_index.flip(0), size=(11, 11)).to_sparse_csr()
    # stored entries of adj_t are sorted by (dst, src); give edge_attr in that order
    order = torch.argsort(edge_index[1] * 11 + edge_index[0])
    with torch.no_grad():
        expected = conv(x, edge_index, edge_attr)
        assert torch.allclose(conv(x, adj_t, edge_attr[order]), expected, atol=1e-6)


def test_sparse_tensor_input():
    torch_sparse = pytest.importorskip("torch_sparse")
    x, edge_index, _ = random_batch([9], 20, torch.Generator().manual_seed(5))
    edge_index = torch.unique(edge_index, dim=1)
    adj_t = torch_sparse.SparseTensor.from_edge_index(edge_index, sparse_sizes=(9, 9)).t()
    conv = FlexGraphConv(8, 4, heads=2)
    with torch.no_grad():
        assert torch.allclose(conv(x, adj_t), conv(x, edge_index), atol=1e-6)


@pytest.mark.parametrize("mode", ["local", "global"])
def test_edge_permutation_invariance(mode):
    generator = torch.Generator().manual_seed(6)
    x, edge_index, batch = random_batch([7, 9], 20, generator)
    inputs = _edge_inputs(edge_index, generator)
    conv, _ = _twins(6, in_channels=8, out_channels=4, heads=2, mode=mode, **GATED)
    perm = torch.randperm(edge_index.size(1), generator=generator)
    permuted = {name: value[perm] for name, value in inputs.items()}
    with torch.no_grad():
        out = conv(x, edge_index, batch=batch, **inputs)
        assert torch.allclose(conv(x, edge_index[:, perm], batch=batch, **permuted), out, atol=1e-6)


@pytest.mark.parametrize("mode", ["local", "global"])
def test_node_permutation_equivariance(mode):
    generator = torch.Generator().manual_seed(7)
    x, edge_index, _ = random_batch([15], 40, generator)
    inputs = _edge_inputs(edge_index, generator)
    conv, _ = _twins(7, in_channels=8, out_channels=4, heads=2, mode=mode, **GATED)
    perm = torch.randperm(15, generator=generator)
    inverse = torch.argsort(perm)
    with torch.no_grad():
        out = conv(x, edge_index, **inputs)
        out_perm = conv(x[perm], inverse[edge_index], **inputs)
    assert torch.allclose(out_perm, out[perm], atol=1e-5)


@pytest.mark.parametrize("backend", ["message_passing", "flex"])
@pytest.mark.parametrize("mode", ["local", "global"])
def test_graph_output_independent_of_batch_neighbours(backend, mode):
    generator = torch.Generator().manual_seed(8)
    x, edge_index, batch = random_batch([6, 150, 4], 25, generator)
    inputs = _edge_inputs(edge_index, generator)
    conv, flex = _twins(
        8, in_channels=8, out_channels=4, heads=2, mode=mode, block_size=16, **GATED
    )
    layer = conv if backend == "message_passing" else flex
    first = batch == 0
    keep = first[edge_index[0]]
    with torch.no_grad():
        together = layer(x, edge_index, batch=batch, **inputs)[first]
        alone = layer(
            x[first],
            edge_index[:, keep],
            batch=batch[first],
            **{name: value[keep] for name, value in inputs.items()},
        )
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("mode", ["local", "global"])
def test_attention_weights_sum_to_one(mode):
    generator = torch.Generator().manual_seed(9)
    x, edge_index, batch = random_batch([8, 12], 25, generator)
    x = torch.cat([x, torch.randn(1, 8, generator=generator)])  # an isolated node
    batch = torch.cat([batch, torch.tensor([2])])
    inputs = _edge_inputs(edge_index, generator)
    conv, _ = _twins(9, in_channels=8, out_channels=4, heads=3, mode=mode, **GATED)
    out, (index, alpha) = conv(x, edge_index, batch=batch, return_attention_weights=True, **inputs)
    assert out.shape == (21, 12)
    if mode == "local":
        assert torch.equal(index, edge_index)
    assert alpha.shape == (index.size(1), 3) and (alpha >= 0).all()
    totals = scatter(alpha, index[1], 0, 21)
    has_incoming = torch.zeros(21, dtype=torch.bool)
    has_incoming[index[1]] = True
    assert torch.allclose(totals[has_incoming], torch.ones(1), atol=1e-5)
    assert torch.equal(totals[~has_incoming], torch.zeros_like(totals[~has_incoming]))


def test_reset_parameters_restores_initial_state():
    conv = FlexGraphConv(8, 4, heads=2, mode="global", **GATED)
    torch.manual_seed(0)
    conv.reset_parameters()
    initial = {k: v.clone() for k, v in conv.state_dict().items()}
    _randomize(conv, 10)
    torch.manual_seed(0)
    conv.reset_parameters()
    for name, value in conv.state_dict().items():
        assert torch.equal(value, initial[name]), name
    assert torch.count_nonzero(conv.no_edge_bias) == 0
    assert torch.count_nonzero(conv.gate_type.weight) == 0


def test_gradcheck_message_passing_with_edge_parameters():
    generator = torch.Generator().manual_seed(11)
    x, edge_index, batch = random_batch([4, 5], 8, generator, channels=3)
    x = x.double().requires_grad_()
    edge_attr = torch.randn(edge_index.size(1), 2, generator=generator).double()
    edge_type = torch.randint(0, 2, (edge_index.size(1),), generator=generator)
    conv = FlexGraphConv(
        3,
        2,
        heads=2,
        mode="global",
        edge_dim=2,
        num_edge_types=2,
        max_distance=2,
        backend="message_passing",
    ).double()
    _randomize(conv, 11)
    names = ["lin_edge.weight", "no_edge_bias", "gate_type.weight", "distance_bias.weight"]
    params = {name: p.detach().clone().requires_grad_() for name, p in conv.named_parameters()}

    def run(x, *edge_params):
        values = dict(params, **dict(zip(names, edge_params, strict=True)))
        return torch.func.functional_call(
            conv,
            values,
            (x, edge_index),
            {"edge_attr": edge_attr, "batch": batch, "edge_type": edge_type},
        )

    assert torch.autograd.gradcheck(run, (x, *(params[name] for name in names)))
    out = run(x, *(params[name] for name in names))
    out.square().sum().backward()
    for name in names:
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name


# ------------------------------------------------------------------- structure sharing
def test_shared_structure_matches_per_layer_build_and_stale_raises():
    generator = torch.Generator().manual_seed(12)
    x, edge_index, batch = random_batch([6, 7], 15, generator)
    conv = FlexGraphConv(8, 4, heads=2, mode="global", max_distance=2)
    structure = GraphStructure.build(edge_index, 13, batch, mode="global", max_distance=2)
    with torch.no_grad():
        assert torch.equal(
            conv(x, edge_index, batch=batch, structure=structure), conv(x, edge_index, batch=batch)
        )
    other = edge_index.flip(0)
    with pytest.raises(ValueError, match="structure was built for another graph"):
        conv(x, other, batch=batch, structure=structure)
    with pytest.raises(ValueError, match="mode='global'"):
        FlexGraphConv(8, 4)(x, edge_index, structure=structure)
    with pytest.raises(ValueError, match="max_distance=3"):
        FlexGraphConv(8, 4, mode="global", max_distance=3)(x, edge_index, structure=structure)


def test_empty_edges_give_root_weight_only():
    x = torch.randn(5, 8)
    edge_index = torch.zeros(2, 0, dtype=torch.long)
    for backend in ("message_passing", "flex"):
        conv = FlexGraphConv(8, 4, heads=2, backend=backend)
        with torch.no_grad():
            assert torch.allclose(conv(x, edge_index), conv.lin_skip(x))


# ------------------------------------------------------------------------------ bad input
def _bad_calls():
    x, edge_index = torch.randn(4, 8), torch.tensor([[0, 1, 2], [1, 2, 3]])
    return (
        [
            ({"x": torch.randn(4)}, {}, ValueError, "x must be 2-D"),
            ({"x": torch.randn(4, 5)}, {}, ValueError, "x must have 8 channels"),
            (
                {"x": torch.zeros(4, 8, dtype=torch.long)},
                {},
                TypeError,
                "x must be a floating-point",
            ),
            ({"edge_index": edge_index.float()}, {}, TypeError, "edge_index must have dtype"),
            ({"edge_index": edge_index.t()}, {}, ValueError, "edge_index must have shape"),
            ({"edge_index": edge_index + 3}, {}, ValueError, "refers to node 6"),
            ({"edge_index": edge_index - 1}, {}, ValueError, "negative"),
            (
                {"edge_attr": torch.randn(2, 3)},
                {"edge_dim": 3},
                ValueError,
                "edge_attr must have one row per edge",
            ),
            ({"edge_attr": torch.randn(3, 2)}, {"edge_dim": 3}, ValueError, "edge_dim=3 columns"),
            ({}, {"edge_dim": 3}, ValueError, "edge_attr .* is required"),
            ({"edge_attr": torch.randn(3, 3)}, {}, ValueError, "edge_dim=None"),
            (
                {"edge_type": torch.tensor([0, 1, 5])},
                {"num_edge_types": 2},
                ValueError,
                "edge_type values",
            ),
            (
                {"edge_type": torch.tensor([0.0, 1, 1])},
                {"num_edge_types": 2},
                TypeError,
                "edge_type must be an integer",
            ),
            (
                {"batch": torch.tensor([0, 1, 0, 1])},
                {"mode": "global"},
                ValueError,
                "batch must be sorted",
            ),
            (
                {"batch": torch.tensor([0, 0, 1])},
                {"mode": "global"},
                ValueError,
                "batch must have shape",
            ),
        ],
        x,
        edge_index,
    )


@pytest.mark.parametrize("index", range(15))
def test_bad_input_names_the_argument(index):
    calls, x, edge_index = _bad_calls()
    call, options, error, match = calls[index]
    arguments = {"x": x, "edge_index": edge_index, **call}
    with pytest.raises(error, match=match):
        FlexGraphConv(8, 4, **options)(**arguments)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "full"}, "mode must be one of"),
        ({"backend": "cuda"}, "backend must be one of"),
        ({"heads": 0}, "heads must be a positive int"),
        ({"in_channels": (8, 4), "mode": "global"}, "in_channels must be int"),
        ({"max_distance": -1}, "max_distance must be a positive int"),
        ({"dropout": 1.5}, "dropout must be in"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    arguments = {"in_channels": 8, "out_channels": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        FlexGraphConv(**arguments)


def test_flex_backend_refuses_cpu_backward_and_dropout_clearly():
    x, edge_index = torch.randn(4, 8), torch.tensor([[0, 1, 2], [1, 2, 3]])
    with pytest.raises(ValueError, match="no FlexAttention backward on CPU"):
        FlexGraphConv(8, 4, backend="flex")(x, edge_index)
    with torch.no_grad(), pytest.raises(ValueError, match="attention dropout is not supported"):
        FlexGraphConv(8, 4, backend="flex", dropout=0.1)(x, edge_index)


@pytest.mark.parametrize(
    ("mode", "layout"), [("local", "rcm"), ("global", "pack")], ids=["rcm", "pack"]
)
@pytest.mark.parametrize("backend", ["message_passing", "flex"])
def test_layout_is_invisible_to_the_caller(mode, layout, backend):
    generator = torch.Generator().manual_seed(13)
    x, edge_index, batch = random_batch([5, 11, 3, 9, 14, 6], 20, generator)
    inputs = _edge_inputs(edge_index, generator)
    message_passing, flex = _twins(
        13, in_channels=8, out_channels=4, heads=2, mode=mode, block_size=16, **GATED
    )
    layer = message_passing if backend == "message_passing" else flex
    build = {"mode": mode, "max_distance": 3, "block_size": 16, "flex": True}
    plain = GraphStructure.build(edge_index, x.size(0), batch, layout=None, **build)
    laid_out = GraphStructure.build(edge_index, x.size(0), batch, layout=layout, **build)
    assert laid_out.layout.node_slot is not None
    with torch.no_grad():
        expected = message_passing(x, edge_index, batch=batch, structure=plain, **inputs)
        out = layer(x, edge_index, batch=batch, structure=laid_out, **inputs)
    assert torch.allclose(out, expected, atol=1e-5)

    _, (index, alpha) = message_passing(
        x, edge_index, batch=batch, structure=laid_out, return_attention_weights=True, **inputs
    )
    _, (plain_index, plain_alpha) = message_passing(
        x, edge_index, batch=batch, structure=plain, return_attention_weights=True, **inputs
    )
    order, plain_order = (torch.argsort(i[1] * x.size(0) + i[0]) for i in (index, plain_index))
    assert torch.equal(index[:, order], plain_index[:, plain_order])
    assert torch.allclose(alpha[order], plain_alpha[plain_order], atol=1e-6)


@pytest.mark.parametrize("mode", ["local", "global"])
def test_hash_lookup_gives_the_same_layer_output(mode):
    generator = torch.Generator().manual_seed(14)
    x, edge_index, batch = random_batch([6, 13, 4], 18, generator)
    inputs = _edge_inputs(edge_index, generator)
    message_passing, flex = _twins(14, in_channels=8, out_channels=4, heads=2, mode=mode, **GATED)
    build = {"mode": mode, "max_distance": 3, "block_size": 8, "flex": True}
    tiles = GraphStructure.build(edge_index, x.size(0), batch, lookup="tiles", **build)
    hashed = GraphStructure.build(edge_index, x.size(0), batch, lookup="hash", **build)
    with torch.no_grad():
        expected = message_passing(x, edge_index, batch=batch, structure=tiles, **inputs)
        for layer in (message_passing, flex):
            out = layer(x, edge_index, batch=batch, structure=hashed, **inputs)
            assert torch.allclose(out, expected, atol=1e-5)


def test_auto_backend_uses_flex_on_cuda_only_where_blocks_are_dense():
    """Sparse local structures (a molecule batch: ~1/150 of each 128×128 tile is an edge) run
    message passing even on CUDA; global structures and dense local ones run FlexAttention; in
    between, the threshold depends on the compute dtype (bf16 tiles are cheaper). On the CPU,
    global structures whose graphs fit a block run the dense backend."""
    from types import SimpleNamespace

    from pyg_mup.graph.blocks import FLEX_MIN_BLOCK_DENSITY
    from pyg_mup.nn.backends import resolve_backend

    _, edge_index, batch = random_batch([20] * 40, 3, torch.Generator().manual_seed(0))
    num_nodes = batch.numel()
    sparse = GraphStructure.build(edge_index, num_nodes, batch, mode="local", flex=True)
    whole = GraphStructure.build(edge_index, num_nodes, batch, mode="global", flex=True)
    packed_for_cpu = GraphStructure.build(edge_index, num_nodes, batch, mode="global")
    block = torch.arange(16)
    clique = torch.cartesian_prod(block, block).t().contiguous()
    dense = GraphStructure.build(clique, 16, mode="local", block_size=16, flex=True)
    assert sparse.block_density < min(FLEX_MIN_BLOCK_DENSITY.values())
    assert whole.block_density == 1.0 and dense.block_density == 1.0

    def query(is_cuda=True, dtype=torch.float32, channels=16):
        return SimpleNamespace(is_cuda=is_cuda, dtype=dtype, size=lambda dim: channels)

    def resolve(q, structure, **flags):
        flags = {"need_weights": False, "dropout": False, **flags}
        return resolve_backend("auto", q, structure, **flags)

    assert resolve(query(), sparse) == "message_passing"
    assert resolve(query(), whole) == "flex"
    assert resolve(query(), dense) == "flex"
    assert resolve(query(is_cuda=False), packed_for_cpu) == "dense"
    assert resolve(query(is_cuda=False), sparse) == "message_passing"
    sixteenth = GraphStructure.build(clique[:, ::16], 16, mode="local", block_size=16, flex=True)
    assert sixteenth.block_density == 1 / 16
    thirty_second = GraphStructure.build(
        clique[:, ::32], 16, mode="local", block_size=16, flex=True
    )
    assert resolve(query(dtype=torch.bfloat16), thirty_second) == "flex"
    assert resolve(query(), thirty_second) == "message_passing"
    assert resolve(query(), sixteenth) == "flex"
    with pytest.warns(UserWarning, match="below FlexAttention's CUDA minimum"):
        assert resolve(query(channels=8), whole) == "message_passing"
    assert resolve(query(), whole, need_weights=True) == "message_passing"
    assert resolve(query(), whole, dropout=True) == "message_passing"


# ------------------------------------------------------------------- dense backend (CPU)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    edges_per_graph=st.integers(0, 30),
    gated=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_dense_equals_message_passing_with_its_gradients(sizes, edges_per_graph, gated, seed):
    """The blocked dense backend computes the message-passing function, forward and backward,
    with edge biases (parallel edges included: random edges repeat), type and distance gates,
    one-node graphs and graphs without edges. In float64: the gradients reach ~100, where
    float32's summation order alone differs by ~1e-4 (a drawn example failed so)."""
    generator = torch.Generator().manual_seed(seed)
    x, edge_index, batch = random_batch(sizes, edges_per_graph, generator)
    x = x.double()
    options = GATED if gated else {}
    torch.manual_seed(seed)
    reference = FlexGraphConv(8, 4, heads=2, mode="global", backend="message_passing", **options)
    _randomize(reference, seed)
    reference.double()
    dense = FlexGraphConv(8, 4, heads=2, mode="global", backend="dense", **options).double()
    dense.load_state_dict(reference.state_dict())
    inputs = _edge_inputs(edge_index, generator) if gated else {}
    if gated:
        inputs["edge_attr"] = inputs["edge_attr"].double()
    structure = GraphStructure.build(
        edge_index, x.size(0), batch, mode="global", max_distance=options.get("max_distance")
    )
    assert structure.fits_dense_blocks
    outs, grads = [], []
    for layer in (reference, dense):
        features = x.clone().requires_grad_()
        out = layer(features, edge_index, batch=batch, structure=structure, **inputs)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([features.grad, *(p.grad for p in layer.parameters())])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-9, atol=1e-9)
    for got, expected in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_gradcheck_dense_with_edge_parameters():
    generator = torch.Generator().manual_seed(12)
    x, edge_index, batch = random_batch([4, 1, 5], 8, generator, channels=3)
    x = x.double().requires_grad_()
    edge_attr = torch.randn(edge_index.size(1), 2, generator=generator).double()
    conv = FlexGraphConv(3, 2, heads=2, mode="global", edge_dim=2, max_distance=2)
    conv = conv.double()
    _randomize(conv, 12)
    structure = GraphStructure.build(edge_index, x.size(0), batch, mode="global", max_distance=2)
    names = ["lin_edge.weight", "no_edge_bias", "distance_bias.weight"]
    params = {name: p.detach().clone().requires_grad_() for name, p in conv.named_parameters()}

    def run(x, *edge_params):
        values = dict(params, **dict(zip(names, edge_params, strict=True)))
        return torch.func.functional_call(
            conv, values, (x,), {"edge_attr": edge_attr, "structure": structure}
        )

    from pyg_mup.nn.backends import resolve_backend

    assert resolve_backend("auto", x, structure, need_weights=False, dropout=False) == "dense"
    assert torch.autograd.gradcheck(run, (x, *(params[name] for name in names)))
