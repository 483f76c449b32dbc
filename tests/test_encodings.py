"""Node encodings: spec parsing, PyG's values, tiny graphs, determinism, sign flips, μP shapes."""

from __future__ import annotations

import pickle
import re

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader
from torch_geometric.transforms import AddLaplacianEigenvectorPE, AddRandomWalkPE

from pyg_mup.data import load_dataset
from pyg_mup.models.encodings import (
    Encoding,
    NodeEncodings,
    encoding_transform,
    encodings_of,
    parse_encoding,
)
from pyg_mup.mup import build_mup_model, mup_param_groups, width_infos

SPECS = ("rwse:16", "lap:8", "degree")


@pytest.fixture(scope="module")
def molecules() -> list[Data]:
    """The shipped dataset's first 60 graphs, then its graphs of 1 to 3 atoms."""
    dataset = load_dataset("ogbg-molesol").dataset
    tiny = [g for g in dataset if g.num_nodes <= 3]
    return [dataset[i] for i in range(60)] + tiny


def undirected(edges: list[tuple[int, int]], num_nodes: int) -> Data:
    edge_index = torch.tensor(edges, dtype=torch.long).view(-1, 2).t()
    return Data(edge_index=torch.cat([edge_index, edge_index.flip(0)], 1), num_nodes=num_nodes)


def random_graph(num_nodes: int, seed: int) -> Data:
    """A connected graph: a random tree plus a few chords (distinct eigenvalues, almost surely)."""
    g = torch.Generator().manual_seed(seed)
    parents = [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, num_nodes)]
    edges = [(p, i + 1) for i, p in enumerate(parents)]
    edges += torch.randint(0, num_nodes, (num_nodes // 4, 2), generator=g).tolist()
    return undirected(edges, num_nodes)


def align_signs(ours: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``reference`` with each column's sign flipped to agree with ``ours``."""
    return reference * torch.where((ours * reference).sum(0) < 0, -1.0, 1.0)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("rwse:16", Encoding("rwse", 16)),
        ("lap:8", Encoding("lap", 8)),
        ("degree", Encoding("degree")),
    ],
)
def test_parse_encoding(spec, expected):
    encoding = parse_encoding(spec)
    assert encoding == expected
    assert str(encoding) == spec
    assert encoding.attr_name == {"rwse": "rwse", "lap": "lap_pe", "degree": None}[encoding.kind]


@pytest.mark.parametrize("spec", ["rwse", "lap:0", "lap:-2", "rwse:4.5", "pe:3", "degree:4", "", 8])
def test_parse_encoding_errors_name_the_spec(spec):
    with pytest.raises(ValueError, match="^encoding spec " + re.escape(repr(spec))):
        parse_encoding(spec)


def test_a_kind_given_twice_is_an_error():
    with pytest.raises(ValueError, match="'rwse' twice"):
        encoding_transform(["rwse:4", "rwse:8"])


def test_transform_only_for_stored_encodings():
    assert encoding_transform([]) is None
    assert encoding_transform(["degree"]) is None
    transform = encoding_transform(SPECS)
    assert repr(transform) == "EncodingTransform(rwse:16, lap:8)"
    assert repr(encoding_transform(["lap:8", "rwse:16"])) == "EncodingTransform(lap:8, rwse:16)"
    assert repr(pickle.loads(pickle.dumps(transform))) == repr(transform)


def test_values_equal_pygs_transforms(molecules):
    transform = encoding_transform(SPECS)
    big = [m for m in molecules if m.num_nodes > 8]
    assert len(big) > 40
    for data in big:
        out = transform(data)
        rwse = AddRandomWalkPE(16, attr_name="rwse")(data).rwse
        torch.testing.assert_close(out.rwse, rwse, rtol=0, atol=0)
        lap = AddLaplacianEigenvectorPE(8, attr_name="lap_pe", is_undirected=True)(data).lap_pe
        assert out.lap_pe.shape == (data.num_nodes, 8) and out.lap_pe.dtype == torch.float32
        torch.testing.assert_close(out.lap_pe, align_signs(out.lap_pe, lap), rtol=0, atol=0)
        assert out.x is data.x and out.edge_attr is data.edge_attr  # the rest is untouched


def test_sparse_eigensolver_path_matches_pyg():
    """Graphs of ≥ 100 nodes go through ARPACK, started from a fixed vector (PyG: random)."""
    data = random_graph(130, seed=3)
    assert data.num_nodes >= AddLaplacianEigenvectorPE.SPARSE_THRESHOLD
    ours = encoding_transform(["lap:6"])(data).lap_pe
    lap = AddLaplacianEigenvectorPE(6, attr_name="lap_pe", is_undirected=True)(data).lap_pe
    torch.testing.assert_close(ours, align_signs(ours, lap), rtol=0, atol=1e-4)
    torch.testing.assert_close(encoding_transform(["lap:6"])(data).lap_pe, ours, rtol=0, atol=0)


def test_tiny_graphs_are_zero_padded(molecules):
    """N ≤ k: the N - 1 non-trivial eigenvectors, then zeros (PyG's transform fails there)."""
    transform = encoding_transform(["rwse:4", "lap:8"])
    single = transform(undirected([], 1))
    assert torch.equal(single.lap_pe, torch.zeros(1, 8))
    assert torch.equal(single.rwse, torch.zeros(1, 4))
    path = undirected([(0, 1), (1, 2)], 3)
    out = transform(path).lap_pe
    assert out.shape == (3, 8) and torch.equal(out[:, 2:], torch.zeros(3, 6))
    lap = AddLaplacianEigenvectorPE(2, attr_name="lap_pe", is_undirected=True)(path).lap_pe
    torch.testing.assert_close(out[:, :2], align_signs(out[:, :2], lap), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="size of tensor"):  # what the wrapper is for
        AddLaplacianEigenvectorPE(8, attr_name="lap_pe", is_undirected=True)(path)
    one_atom = [m for m in molecules if m.num_nodes == 1]
    assert one_atom and all(torch.equal(transform(m).lap_pe, torch.zeros(1, 8)) for m in one_atom)
    for m in molecules:
        assert transform(m).lap_pe[:, m.num_nodes - 1 :].abs().sum() == 0


def test_transform_is_deterministic_and_leaves_the_rng_alone(molecules):
    transform = encoding_transform(SPECS)
    state = torch.get_rng_state()
    first = [transform(m).lap_pe for m in molecules]
    assert torch.equal(torch.get_rng_state(), state)
    again = pickle.loads(pickle.dumps(transform))
    for data, lap in zip(molecules, first, strict=True):
        assert torch.equal(again(data).lap_pe, lap)
    peaks = [lap.gather(0, lap.abs().argmax(0, keepdim=True)) for lap in first if lap.size(0) > 8]
    assert all(bool((p > 0).all()) for p in peaks)  # canonical: largest entry positive


def graph_batch(molecules: list[Data], count: int = 6) -> Batch:
    transform = encoding_transform(SPECS)
    return Batch.from_data_list([transform(m) for m in molecules[:count]])


def test_usable_as_the_datasets_pre_transform(tmp_path, molecules):
    """Stored once by ``load_dataset``; the cached values are the transform's (deterministic)."""
    data = load_dataset("ogbg-molesol", pre_transform=encoding_transform(SPECS), cache_dir=tmp_path)
    for i in (0, 5):
        expected = encoding_transform(SPECS)(molecules[i])
        assert torch.equal(data.dataset[i].lap_pe, expected.lap_pe)
        assert torch.equal(data.dataset[i].rwse, expected.rwse)
    batch = next(iter(DataLoader(data.dataset, batch_size=32)))
    encodings = encodings_of(batch, SPECS)
    out = NodeEncodings(SPECS, 8)(encodings, batch.edge_index, batch.num_nodes, batch.batch)
    assert out.shape == (batch.num_nodes, 8)


def test_encodings_of_picks_stored_tensors(molecules):
    batch = graph_batch(molecules)
    encodings = encodings_of(batch, SPECS)
    assert sorted(encodings) == ["lap_pe", "rwse"]
    assert encodings["rwse"] is batch.rwse and encodings["lap_pe"].shape == (batch.num_nodes, 8)
    with pytest.raises(ValueError, match=r"no 'rwse'.*pre_transform=encoding_transform"):
        encodings_of(Batch.from_data_list(molecules[:2]), ["rwse:16"])
    with pytest.raises(ValueError, match=r"batch.rwse has shape \(\d+, 16\), encoding rwse:8"):
        encodings_of(batch, ["rwse:8"])


def test_lap_signs_flip_per_graph_only_in_training(molecules):
    """With an identity map, the output is the eigenvectors times each graph's signs."""
    batch = graph_batch(molecules, count=8)
    module = NodeEncodings(["lap:8"], width=8)
    with torch.no_grad():
        module.lins["lap_pe"].weight.copy_(torch.eye(8))
        module.lins["lap_pe"].bias.zero_()
    args = ({"lap_pe": batch.lap_pe}, batch.edge_index, batch.num_nodes, batch.batch)
    module.eval()
    assert torch.equal(module(*args), batch.lap_pe)
    module.train()
    torch.manual_seed(0)
    seen = set()
    nonzero = batch.lap_pe != 0
    for _ in range(10):
        signs = torch.where(nonzero, module(*args) / batch.lap_pe, 0.0)
        for graph in range(batch.num_graphs):
            rows = signs[batch.batch == graph]
            for column in range(8):
                values = rows[:, column][nonzero[batch.batch == graph][:, column]]
                assert values.numel() == 0 or set(values.tolist()) in ({1.0}, {-1.0})
        seen.add(tuple(signs[batch.ptr[:-1]][:, 0].tolist()))
    assert len(seen) > 5  # signs differ between graphs and calls


def test_degree_embedding_is_clipped_in_degree():
    data = undirected([(0, 1), (0, 2), (0, 3), (0, 4), (1, 2)], 6)  # degrees 4, 2, 2, 1, 1, 0
    module = NodeEncodings(["degree"], width=5, max_degree=2)
    out = module({}, data.edge_index, data.num_nodes)
    torch.testing.assert_close(out, module.degree.weight[torch.tensor([2, 2, 2, 1, 1, 0])])


def test_input_layers_under_mup(molecules):
    """Fan-in fixed, fan-out width: one width dim, Adam lr unchanged, init width-independent."""
    batch = graph_batch(molecules)
    model = build_mup_model(lambda w: NodeEncodings(SPECS, w), 1024, 64)
    infos = width_infos(model)
    assert {n: i.width_dims for n, i in infos.items()} == {
        "lins.rwse.weight": {0},
        "lins.rwse.bias": {0},
        "lins.lap_pe.weight": {0},
        "lins.lap_pe.bias": {0},
        "degree.weight": {1},
    }
    assert {g["lr"] for g in mup_param_groups(model, lr=0.1)} == {0.1}
    model.eval()
    rms = []
    for width in (64, 1024):
        torch.manual_seed(0)
        module = NodeEncodings(SPECS, width).eval()
        out = module(encodings_of(batch, SPECS), batch.edge_index, batch.num_nodes, batch.batch)
        rms.append(out.pow(2).mean().sqrt().item())
    assert 0.85 < rms[1] / rms[0] < 1.15, rms


def test_errors():
    with pytest.raises(ValueError, match="at least one"):
        NodeEncodings([], 8)
    module = NodeEncodings(["rwse:4"], 8)
    with pytest.raises(ValueError, match=r"encodings has no 'rwse'; it has \['lap_pe'\]"):
        module({"lap_pe": torch.zeros(3, 4)}, torch.zeros(2, 0, dtype=torch.long), 3)
