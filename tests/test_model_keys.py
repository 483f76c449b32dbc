"""Parameter names of the graph-level models' input encoders, pinned: checkpoints (``best.pt``,
``checkpoint.pt``) saved by earlier versions load only while these names stay."""

from __future__ import annotations

import pytest
import torch

from pyg_mup.models import GraphTransformer
from pyg_mup.models.encoders import count_nodes, encode_nodes, node_encoders
from pyg_mup.models.gine import GINEVirtualNode

ATOMS = [f"node_encoder.encoder.atom_embedding_list.{i}.weight" for i in range(9)]
BONDS = [f"encoder.bond_embedding_list.{i}.weight" for i in range(3)]
PROLOGUE = ("node_encoder", "encodings", "edge_encoder", "edge_encoders")


def _prologue_keys(model: torch.nn.Module) -> list[str]:
    return [k for k in model.state_dict() if k.split(".")[0] in PROLOGUE]


def test_gine_encoder_names():
    model = GINEVirtualNode(1, width=8, layers=2, encodings=("rwse:4", "degree"))
    assert _prologue_keys(model) == [
        *ATOMS,
        "encodings.lins.rwse.weight",
        "encodings.lins.rwse.bias",
        "encodings.degree.weight",
        *(f"edge_encoders.{layer}.{key}" for layer in range(2) for key in BONDS),
    ]
    assert {k.split(".")[0] for k in model.state_dict()} == {
        *PROLOGUE[:2],
        "edge_encoders",
        "convs",
        "norms",
        "virtual_start",
        "virtual_mlps",
        "head",
    }


def test_graph_transformer_encoder_names():
    model = GraphTransformer(1, width=8, layers=1, heads=2, encodings=("lap:4", "degree"))
    assert _prologue_keys(model) == [
        *ATOMS,
        "encodings.lins.lap_pe.weight",
        "encodings.lins.lap_pe.bias",
        "encodings.degree.weight",
        *(f"edge_encoder.{key}" for key in BONDS),
    ]
    assert {k.split(".")[0] for k in model.state_dict()} == {
        *PROLOGUE[:2],
        "edge_encoder",
        "blocks",
        "norm",
        "head",
    }


def test_encode_nodes_adds_the_encodings_to_the_node_features():
    torch.manual_seed(0)
    node_encoder, encodings = node_encoders(3, 4, ("rwse:2", "degree"))
    x, rwse = torch.randn(3, 3), torch.randn(3, 2)
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 1]])  # in-degrees 0, 2, 1
    h = encode_nodes(node_encoder, encodings, x, {"rwse": rwse}, edge_index, 3, None)
    degree = encodings.degree.weight[torch.tensor([0, 2, 1])]
    assert torch.allclose(h, node_encoder(x) + encodings.lins["rwse"](rwse) + degree)
    assert node_encoders(3, 4)[1] is None
    with pytest.raises(ValueError, match="encodings has no 'rwse'; it has \\[\\]"):
        encode_nodes(node_encoder, encodings, x, None, edge_index, 3, None)


def test_count_nodes():
    assert count_nodes(torch.zeros(5, 2), None) == 5
    assert count_nodes(None, torch.zeros(4, dtype=torch.long)) == 4
    with pytest.raises(ValueError, match="x or batch is required"):
        count_nodes(None, None)
