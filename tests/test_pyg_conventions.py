"""FlexGraphConv against PyG's own bar: the cases of PyG's ``test_transformer_conv.py`` that
apply (repr, shapes, sparse layouts, attention weights, bipartite), PyG's sparse-input
conventions (edge features carried by ``adj_t``, weights returned in its sparse type), and
``torch.compile`` / ``torch.export`` of a layer."""

import pytest
import torch
from torch_geometric.nn import TransformerConv
from torch_geometric.utils import to_edge_index, to_torch_csc_tensor

from pyg_mup import FlexGraphConv, GraphStructure

# PyG's test graph: nodes 0, 1 each receive two edges, nodes 2, 3 none
EDGE_INDEX = torch.tensor([[0, 1, 2, 3], [0, 0, 1, 1]])


def _features(seed: int, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator) for shape in shapes]


def _adj_t(edge_index: torch.Tensor, size: tuple[int, int], layout: str, values=None):
    """``adj_t`` ``[N_dst, N_src]`` of ``edge_index`` in a torch sparse layout, with the given
    per-edge ``values`` (``[E]`` or ``[E, F]``: a hybrid tensor) in edge order; edges must be
    unique."""
    num_src, num_dst = size
    if values is None:
        values = torch.ones(edge_index.size(1))
    coo = torch.sparse_coo_tensor(
        edge_index.flip(0), values, (num_dst, num_src, *values.shape[1:])
    ).coalesce()
    if layout == "coo":
        return coo
    # from dense: stored entries are the non-zeros, and random edge values are never zero
    dense, dense_dim = coo.to_dense(), values.dim() - 1
    if layout == "csr":
        return dense.to_sparse_csr(dense_dim=dense_dim)
    return dense.to_sparse_csc(dense_dim=dense_dim)


def _stored_order(adj_t: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """The edge of each stored entry of ``adj_t`` (unique edges): ``edge_index[:, order]`` is
    the adjacency's edge order."""
    num_src = adj_t.size(1)
    (dst, src), _ = to_edge_index(adj_t)
    edge_key = edge_index[1] * num_src + edge_index[0]
    by_key = torch.argsort(edge_key)
    return by_key[torch.searchsorted(edge_key[by_key], dst * num_src + src)]


# ---------------------------------------------------------------- PyG's test_transformer_conv
@pytest.mark.parametrize("edge_dim", [None, 8])
@pytest.mark.parametrize("concat", [True, False])
def test_transformer_conv_cases(edge_dim, concat):
    x1, x2, edge_attr = _features(0, (4, 8), (2, 16), (4, edge_dim or 1))
    edge_attr = edge_attr if edge_dim else None
    width = 32 * (2 if concat else 1)

    conv = FlexGraphConv(8, 32, heads=2, edge_dim=edge_dim, concat=concat)
    extra = f", edge_dim={edge_dim}" if edge_dim else ""
    assert str(conv) == f"FlexGraphConv(8, 32, heads=2, mode='local'{extra})"
    out = conv(x1, EDGE_INDEX, edge_attr)
    assert out.shape == (4, width)
    adj1 = to_torch_csc_tensor(EDGE_INDEX, size=(4, 4))  # PyG's adj, .t() is the adj_t
    assert torch.allclose(conv(x1, adj1.t(), edge_attr), out, atol=1e-6)

    out_w, (index, alpha) = conv(x1, EDGE_INDEX, edge_attr, return_attention_weights=True)
    assert torch.allclose(out_w, out)
    assert index.shape == (2, 4) and torch.equal(index, EDGE_INDEX)
    assert alpha.shape == (4, 2) and alpha.min() >= 0 and alpha.max() <= 1
    # two edges into each of nodes 0 and 1: their weights sum to one per head
    assert torch.allclose(alpha[:2].sum(0), torch.ones(2))
    assert torch.allclose(alpha[2:].sum(0), torch.ones(2))

    conv = FlexGraphConv((8, 16), 32, heads=2, edge_dim=edge_dim, concat=concat)
    assert str(conv) == f"FlexGraphConv((8, 16), 32, heads=2, mode='local'{extra})"
    out = conv((x1, x2), EDGE_INDEX, edge_attr)
    assert out.shape == (2, width)
    adj1 = to_torch_csc_tensor(EDGE_INDEX, size=(4, 2))
    assert torch.allclose(conv((x1, x2), adj1.t(), edge_attr), out, atol=1e-6)


def test_attention_weights_equal_transformer_conv():
    """Same weights, same attention: TransformerConv's alpha, edge for edge."""
    (x,) = _features(1, (4, 8))
    reference = TransformerConv(8, 32, heads=2)
    conv = FlexGraphConv(8, 32, heads=2)
    ours = conv.state_dict()
    conv.load_state_dict({k: v for k, v in reference.state_dict().items() if k in ours})
    with torch.no_grad():
        expected, (_, expected_alpha) = reference(x, EDGE_INDEX, return_attention_weights=True)
        out, (_, alpha) = conv(x, EDGE_INDEX, return_attention_weights=True)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(alpha, expected_alpha, atol=1e-6)


# ------------------------------------------------------------------ sparse adj_t conventions
def _random_graph(seed: int, num_src: int, num_dst: int, num_edges: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    edge_index = torch.stack(
        [
            torch.randint(0, num_src, (num_edges,), generator=generator),
            torch.randint(0, num_dst, (num_edges,), generator=generator),
        ]
    )
    return torch.unique(edge_index, dim=1)  # a sparse tensor coalesces parallel edges


@pytest.mark.parametrize("layout", ["coo", "csr", "csc"])
@pytest.mark.parametrize("bipartite", [False, True])
def test_attention_weights_come_back_in_the_sparse_type(layout, bipartite):
    """As TransformerConv: ``(adj [N_dst, N_src, H] in adj_t's layout, alpha)``, each stored
    entry the weight of its edge."""
    num_src, num_dst = (9, 6) if bipartite else (9, 9)
    edge_index = _random_graph(2, num_src, num_dst, 30)
    x_src, x_dst, edge_attr = _features(2, (num_src, 8), (num_dst, 8), (edge_index.size(1), 3))
    x = (x_src, x_dst) if bipartite else x_src
    conv = FlexGraphConv((8, 8) if bipartite else 8, 4, heads=3, edge_dim=3)
    adj_t = _adj_t(edge_index, (num_src, num_dst), layout)
    order = _stored_order(adj_t, edge_index)
    with torch.no_grad():
        expected, (_, expected_alpha) = conv(
            x, edge_index, edge_attr, return_attention_weights=True
        )
        out, (weights, alpha) = conv(x, adj_t, edge_attr[order], return_attention_weights=True)
    assert torch.allclose(out, expected, atol=1e-6)
    assert weights.layout == adj_t.layout
    assert weights.shape == (num_dst, num_src, 3) and weights.values().shape == (len(order), 3)
    assert torch.allclose(alpha, expected_alpha[order], atol=1e-6)
    dense = torch.zeros(num_dst, num_src, 3)
    dense[edge_index[1], edge_index[0]] = expected_alpha
    assert torch.allclose(weights.to_dense(), dense, atol=1e-6)


@pytest.mark.parametrize("layout", ["coo", "csr", "csc"])
def test_sparse_adj_t_values_are_the_edge_features(layout):
    """PyG's message passing reads ``[E, F]`` values of a torch sparse ``adj_t`` as
    ``edge_attr`` when none is given; ``[E]`` values (edge weights) are not features, and
    layers without ``edge_dim`` ignore both."""
    edge_index = _random_graph(3, 10, 10, 35)
    x, edge_attr = _features(3, (10, 8), (edge_index.size(1), 3))
    featured = _adj_t(edge_index, (10, 10), layout, edge_attr)
    order = _stored_order(featured, edge_index)
    conv = FlexGraphConv(8, 4, heads=2, edge_dim=3)
    plain = FlexGraphConv(8, 4, heads=2)
    with torch.no_grad():
        expected = conv(x, edge_index, edge_attr)
        assert torch.allclose(conv(x, featured), expected, atol=1e-6)
        # an explicit edge_attr wins over the adjacency's values
        assert torch.allclose(conv(x, featured, edge_attr[order]), expected, atol=1e-6)
        assert torch.allclose(conv(x, featured, -edge_attr[order]), conv(x, edge_index, -edge_attr))
        out, (weights, _) = conv(x, featured, return_attention_weights=True)
        assert torch.allclose(out, expected, atol=1e-6)
        assert weights.layout == featured.layout and weights.shape == (10, 10, 2)
        assert torch.allclose(plain(x, featured), plain(x, edge_index), atol=1e-6)
        weighted = _adj_t(edge_index, (10, 10), layout, edge_attr[:, 0])
        assert torch.allclose(plain(x, weighted), plain(x, edge_index), atol=1e-6)
        with pytest.raises(ValueError, match=r"edge_attr \[E, 3\] is required"):
            conv(x, weighted)


def test_sparse_tensor_values_are_the_edge_features_and_weights_a_sparse_tensor():
    """PyG's ``SparseTensor`` cases: its values are ``edge_attr``; weights come back as a
    ``SparseTensor`` ``[N_dst, N_src, H]``."""
    torch_sparse = pytest.importorskip("torch_sparse")
    x1, x2, edge_attr = _features(4, (4, 8), (2, 16), (4, 8))
    for in_channels, x, size in ((8, x1, (4, 4)), ((8, 16), (x1, x2), (4, 2))):
        conv = FlexGraphConv(in_channels, 32, heads=2, edge_dim=8)
        adj2 = torch_sparse.SparseTensor.from_edge_index(EDGE_INDEX, edge_attr, sparse_sizes=size)
        with torch.no_grad():
            out = conv(x, EDGE_INDEX, edge_attr)
            assert torch.allclose(conv(x, adj2.t()), out, atol=1e-6)
            result = conv(x, adj2.t(), return_attention_weights=True)
        assert torch.allclose(result[0], out, atol=1e-6)
        assert isinstance(result[1], torch_sparse.SparseTensor)
        assert result[1].sizes() == [size[1], size[0], 2] and result[1].nnz() == 4


# ----------------------------------------------------------------------- compile and export
def _gated_layer(mode: str, seed: int, **kwargs) -> FlexGraphConv:
    conv = FlexGraphConv(8, 4, heads=2, mode=mode, edge_dim=3, max_distance=2, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-zero gates and biases, so every part changes the output
        for parameter in conv.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    return conv.eval()


def _graph(seed: int):
    generator = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, 10, (2, 30), generator=generator)
    x, edge_attr = torch.randn(10, 8, generator=generator), torch.randn(30, 3, generator=generator)
    edge_type = torch.randint(0, 3, (30,), generator=generator)
    return x, edge_index, edge_attr, edge_type


def test_torch_compile_of_a_layer():
    """The drop-in call (the layer builds its structure, between graph breaks) and the model
    call (a prebuilt structure: one graph, ``fullgraph=True``) both compile to eager's output."""
    x, edge_index, edge_attr, _ = _graph(5)
    conv = _gated_layer("local", 5, backend="message_passing")
    structure = GraphStructure.build(edge_index, 10, max_distance=2)
    with torch.no_grad():
        expected = conv(x, edge_index, edge_attr)
        compiled = torch.compile(conv, fullgraph=True)
        assert torch.allclose(compiled(x, edge_attr=edge_attr, structure=structure), expected)
        assert torch.allclose(torch.compile(conv)(x, edge_index, edge_attr), expected, atol=1e-6)


class _Exported(torch.nn.Module):
    """What torch.export takes: a module whose structure is a constant of the program."""

    def __init__(self, conv: FlexGraphConv, structure: GraphStructure):
        super().__init__()
        self.conv, self.structure = conv, structure

    def forward(self, x, edge_attr, edge_type):
        return self.conv(x, edge_attr=edge_attr, edge_type=edge_type, structure=self.structure)


@pytest.mark.parametrize("mode", ["local", "global"])
def test_torch_export_of_a_layer_with_a_prebuilt_structure(mode):
    x, edge_index, edge_attr, edge_type = _graph(6)
    conv = _gated_layer(mode, 6, num_edge_types=3)
    structure = GraphStructure.build(edge_index, 10, mode=mode, max_distance=2)
    program = torch.export.export(_Exported(conv, structure), (x, edge_attr, edge_type))
    with torch.no_grad():
        expected = conv(x, edge_index, edge_attr, edge_type=edge_type)
    x2, _, edge_attr2, edge_type2 = _graph(7)  # new features, same graph
    with torch.no_grad():
        expected2 = conv(x2, edge_index, edge_attr2, edge_type=edge_type2)
    assert torch.allclose(program.module()(x, edge_attr, edge_type), expected, atol=1e-6)
    assert torch.allclose(program.module()(x2, edge_attr2, edge_type2), expected2, atol=1e-6)
    # type 3 would silently read the "no edge" row of the gate: the program asserts the range
    with pytest.raises(RuntimeError, match=r"[Rr]untime assertion"):
        program.module()(x, edge_attr, torch.full_like(edge_type, 3))


def test_torch_export_without_a_prebuilt_structure_raises_clearly():
    x, edge_index, edge_attr, _ = _graph(8)
    conv = _gated_layer("local", 8)
    with pytest.raises(RuntimeError, match="export of FlexGraphConv needs a prebuilt structure"):
        torch.export.export(conv, (x, edge_index, edge_attr))
    structure = GraphStructure.build(edge_index, 10, max_distance=2)

    class WithEdges(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.structure = conv, structure

        def forward(self, x, edge_index, edge_attr):
            return self.conv(x, edge_index, edge_attr, structure=self.structure)

    with pytest.raises(RuntimeError, match="leave edge_index and batch out"):
        torch.export.export(WithEdges(), (x, edge_index, edge_attr))


def test_torchscript_raises_clearly():
    """PyG's full tests script their convs; TorchScript is deprecated in torch, so scripting a
    FlexGraphConv, alone or inside a model, says so and names the alternatives."""
    with pytest.raises(TypeError, match=r"does not support TorchScript.*torch.compile"):
        torch.jit.script(FlexGraphConv(8, 4))
    with pytest.raises(TypeError, match="does not support TorchScript"):
        torch.jit.script(torch.nn.Sequential(FlexGraphConv(8, 4)))
