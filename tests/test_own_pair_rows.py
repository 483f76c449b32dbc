"""The message-passing backend's own call of the table mods reads the tables whole
(:class:`~pyg_mup.graph.tables.OwnPairRows`): the same values and gradients as indexing them at
the same rows, and bound structures made once per backend."""

import pytest
import torch
from graphs import random_batch

from pyg_mup.graph import GraphStructure
from pyg_mup.graph.tables import OwnPairRows
from pyg_mup.score_mods import compose, pair_bias, sigmoid_gate

HEADS = 3


def _structure(mode: str, flex: bool) -> GraphStructure:
    _, edge_index, batch = random_batch([7, 11, 5], 20, torch.Generator().manual_seed(3))
    return GraphStructure.build(edge_index, 23, batch, mode=mode, flex=flex)


@pytest.mark.parametrize(("mode", "flex"), [("local", False), ("local", True), ("global", False)])
def test_own_call_reads_what_indexing_reads(mode, flex):
    """At the backend's own indices and head index the mods skip the gather; at copies of the
    same indices (the generic ``table[rows, h]``) they give bitwise the same scores and
    gradients, for padded (look-up) and unpadded tables."""
    bound = GraphStructure.bind(_structure(mode, flex), "message_passing")
    assert isinstance(bound.pair_row, OwnPairRows)
    q, kv = bound.message_passing_indices
    head = bound.pair_row.heads(HEADS)
    assert head is bound.pair_row.heads(HEADS)  # made once
    generator = torch.Generator().manual_seed(4)
    per_pair = torch.randn(bound.num_pairs, HEADS, generator=generator, dtype=torch.float64)
    gate_pairs = per_pair.flip(0).clone().requires_grad_(True)
    bias_pairs = per_pair.clone().requires_grad_(True)
    score = torch.randn(q.size(0), HEADS, generator=generator, dtype=torch.float64)

    def run(*indices):
        mod = compose(
            sigmoid_gate(bound.pair_row, bound.pair_values(gate_pairs)),
            pair_bias(bound.pair_row, bound.pair_values(bias_pairs)),
        )
        out = mod(score, torch.zeros(1, 1, dtype=torch.long), *indices)
        grads = torch.autograd.grad(out.sin().sum(), (gate_pairs, bias_pairs))
        return out, grads

    table = bound.pair_values(per_pair)
    read = bound.pair_row.read(table, head, q, kv)  # the table itself, or a slice: no gather
    assert read._base is table or read is table
    fast, fast_grads = run(head, q, kv)
    # without a look-up only the own pair indices have rows: a copy of the head index then
    slow, slow_grads = (
        run(head.clone(), q.clone(), kv.clone())
        if flex or mode == "global"
        else run(head.clone(), q, kv)
    )
    assert torch.equal(fast, slow)
    for a, b in zip(fast_grads, slow_grads, strict=True):
        assert torch.equal(a, b)
    if mode == "local":  # local pairs are the attended pairs, in order
        assert torch.allclose(fast, score * torch.sigmoid(gate_pairs) + bias_pairs)


def test_bind_once_per_backend_and_again_after_a_move():
    structure = _structure("local", True)
    bound = structure.bind("message_passing")
    assert structure.bind("message_passing") is bound
    assert bound.bound_backend == "message_passing" and structure.bound_backend is None
    assert structure.bind("flex") is not bound and structure.bind("flex").bound_backend == "flex"
    moved = structure.to("cpu")
    assert moved.bound_backend is None
    again = moved.bind("message_passing")
    assert again is not bound
    assert again.message_passing_indices[0] is moved.message_passing_indices[0]
