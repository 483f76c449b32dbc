"""FlexGraphConv's graph inputs: a sparse adj_t of the wrong shape, a prebuilt structure as the only
graph input, and the errors of structure calls that the other conv tests do not reach."""

import pytest
import torch
from torch_geometric.utils import to_torch_csr_tensor

from pyg_mup import FlexGraphConv, GraphStructure

EDGE_INDEX = torch.tensor([[0, 1, 2, 3, 1], [1, 2, 3, 0, 0]])


def _inputs() -> tuple[FlexGraphConv, torch.Tensor]:
    torch.manual_seed(0)
    return FlexGraphConv(8, 4, heads=2), torch.randn(4, 8)


def test_sparse_adj_t_of_the_wrong_shape_names_the_shapes():
    conv, x = _inputs()
    adj_t = to_torch_csr_tensor(EDGE_INDEX.flip(0), size=(4, 5))  # [N_dst, N_src] with N_src 5
    with pytest.raises(
        ValueError, match=r"adj_t must have shape \[N_dst, N_src\]=\[4, 4\], got \[4, 5\]"
    ):
        conv(x, adj_t)


def test_no_edge_index_and_no_structure_raises():
    conv, x = _inputs()
    with pytest.raises(TypeError, match="edge_index is required unless a prebuilt structure"):
        conv(x)


def test_structure_alone_gives_the_weights_along_its_edges():
    conv, x = _inputs()
    structure = GraphStructure.build(EDGE_INDEX, 4)
    with torch.no_grad():
        out, (index, alpha) = conv(x, structure=structure, return_attention_weights=True)
        expected, (_, expected_alpha) = conv(x, EDGE_INDEX, return_attention_weights=True)
    assert torch.equal(index, EDGE_INDEX)
    assert torch.equal(out, expected) and torch.equal(alpha, expected_alpha)
    assert torch.equal(conv(x, structure=structure), expected)


def test_structure_calls_reject_other_inputs():
    conv, x = _inputs()
    structure = GraphStructure.build(EDGE_INDEX, 4)
    with pytest.raises(TypeError, match="structure must be a GraphStructure, got Tensor"):
        conv(x, EDGE_INDEX, structure=EDGE_INDEX)
    with pytest.raises(ValueError, match=r"pass edge_distance to GraphStructure\.build"):
        conv(x, EDGE_INDEX, edge_distance=torch.ones(5, dtype=torch.long), structure=structure)


def test_edge_types_of_no_edges_are_not_range_checked():
    conv = FlexGraphConv(8, 4, heads=2, num_edge_types=2)
    x = torch.randn(3, 8)
    empty = torch.zeros(2, 0, dtype=torch.long)
    with torch.no_grad():
        out = conv(x, empty, edge_type=torch.zeros(0, dtype=torch.long))
    assert torch.equal(out, conv.lin_skip(x))
