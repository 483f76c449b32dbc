"""A custom graph attention written only as mods: the MuPFlexAttention extension point."""

import pytest
import torch
from graphs import dense_distances, random_batch
from torch.nn import Embedding, Parameter

from pyg_mup import GraphStructure, MuPFlexAttention


class DistanceDecayAttention(MuPFlexAttention):
    """Attention whose logits decay with squared Euclidean distance, within a cutoff radius."""

    def __init__(self, in_channels: int, out_channels: int, heads: int = 1, **kwargs):
        super().__init__(in_channels, out_channels, heads, **kwargs)
        self.decay = Parameter(torch.linspace(0.5, 1.5, heads))

    def score_mod(self, structure, pos, cutoff):
        decay = self.decay

        def decayed(score, b, h, q, kv):
            return score - decay[h] * (pos[q] - pos[kv]).square().sum(-1)

        return decayed

    def mask_mod(self, structure, pos, cutoff):
        def within_cutoff(b, h, q, kv):
            return (pos[q] - pos[kv]).square().sum(-1) <= cutoff**2

        return within_cutoff


def _dense_reference(layer, x, pos, batch, cutoff):
    heads, channels = layer.heads, layer.out_channels
    query = layer.lin_query(x).view(-1, heads, channels).transpose(0, 1)
    key = layer.lin_key(x).view(-1, heads, channels).transpose(0, 1)
    value = layer.lin_value(x).view(-1, heads, channels).transpose(0, 1)
    squared = (pos[:, None] - pos[None, :]).square().sum(-1)
    score = query @ key.transpose(1, 2) * layer.scale - layer.decay[:, None, None] * squared
    allowed = (batch[:, None] == batch[None, :]) & (squared <= cutoff**2)
    weight = score.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num()
    out = (weight @ value).transpose(0, 1).reshape(-1, heads * channels)
    return out + layer.lin_skip(x)


@pytest.mark.parametrize("layout", [None, "pack"])
def test_custom_distance_decay_attention_on_both_backends(layout):
    generator = torch.Generator().manual_seed(0)
    x, edge_index, batch = random_batch([9, 14, 5], 10, generator)
    pos = torch.randn(x.size(0), 3, generator=generator)
    structure = GraphStructure.build(
        edge_index, x.size(0), batch, mode="global", block_size=8, layout=layout, flex=True
    )
    pos_in_slots = structure.to_slots(pos)  # mods index by slot; identity without a layout
    torch.manual_seed(0)
    layer = DistanceDecayAttention(8, 4, heads=2, backend="message_passing")
    flex = DistanceDecayAttention(8, 4, heads=2, backend="flex")
    flex.load_state_dict(layer.state_dict())
    with torch.no_grad():
        expected = _dense_reference(layer, x, pos, batch, cutoff=1.5)
        out = layer(x, structure, pos=pos_in_slots, cutoff=1.5)
        assert torch.allclose(out, expected, atol=1e-5)
        out = flex(x, structure, pos=pos_in_slots, cutoff=1.5)
        assert torch.allclose(out, expected, atol=1e-5)

    out = layer(x, structure, pos=pos_in_slots, cutoff=1.5)
    out.sum().backward()
    assert layer.decay.grad is not None and layer.decay.grad.abs().sum() > 0


# --------------------------------------------------------------- the founding example (README)
class GraphAttention(MuPFlexAttention):
    """README's "A custom attention in a few lines", verbatim."""

    def __init__(self, in_channels, out_channels, heads, num_edge_types, max_distance):
        super().__init__(in_channels, out_channels, heads)
        self.type_gate = Embedding(num_edge_types, heads)
        self.distance_gate = Embedding(max_distance + 2, heads)

    def score_mod(self, structure, edge_type):
        per_pair = structure.edge_to_pair(self.type_gate(edge_type))  # [P, H]
        logits = structure.pair_values(per_pair, distance_values=self.distance_gate.weight)

        def gated(score, b, h, q, kv):
            return score * torch.sigmoid(logits[structure.pair_row(q, kv), h])

        return gated


def _gated_reference(layer, x, edge_index, edge_type, batch, mode, max_distance):
    """Dense per-batch attention: ``score * sigmoid(type_gate[pair type] + distance_gate[d])``,
    the pair type the mean embedding over its parallel edges (pairs without an edge get only
    the distance term), softmax over the pairs the mode allows (edge pairs, or one's graph)."""
    num_nodes, heads, channels = x.size(0), layer.heads, layer.out_channels
    query = layer.lin_query(x).view(-1, heads, channels).transpose(0, 1)  # [H, N, d]
    key = layer.lin_key(x).view(-1, heads, channels).transpose(0, 1)
    value = layer.lin_value(x).view(-1, heads, channels).transpose(0, 1)
    score = query @ key.transpose(1, 2) * layer.scale  # [H, N_dst, N_src]
    src, dst = edge_index
    type_sum = torch.zeros(num_nodes, num_nodes, heads).index_put(
        (dst, src), layer.type_gate(edge_type), accumulate=True
    )
    count = torch.zeros(num_nodes, num_nodes).index_put(
        (dst, src), torch.ones(src.numel()), accumulate=True
    )
    is_edge = count > 0
    type_logit = type_sum / count.clamp(min=1).unsqueeze(-1)  # zero where no edge
    if mode == "local":  # distances 0 (self-loop) / 1 (edge); only edge pairs attend
        distance = 1 - torch.eye(num_nodes, dtype=torch.long)
        allowed = is_edge
    else:  # hop distance j -> i; edges stay within graphs, so one matrix serves the batch
        distance = dense_distances(edge_index, num_nodes, max_distance)
        allowed = batch[:, None] == batch[None, :]
    gate = torch.sigmoid(type_logit + layer.distance_gate.weight[distance])  # [N, N, H]
    score = score * gate.permute(2, 0, 1)
    weight = score.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num()
    out = (weight @ value).transpose(0, 1).reshape(num_nodes, heads * channels)
    return out + layer.lin_skip(x)


def _typed_batch(seed: int):
    """A batch with parallel edges of different types (random_batch repeats its first edges)."""
    generator = torch.Generator().manual_seed(seed)
    x, edge_index, batch = random_batch([7, 11, 5], 14, generator, channels=16)
    edge_type = torch.randint(0, 3, (edge_index.size(1),), generator=generator)
    edge_type[-4:-1] = (edge_type[:3] + 1) % 3  # the repeated edges: another type
    return x, edge_index, batch, edge_type


@pytest.mark.parametrize(
    ("mode", "backend"),
    [
        ("local", "message_passing"),
        ("local", "flex"),
        ("global", "message_passing"),
        ("global", "dense"),
        ("global", "flex"),
    ],
)
def test_founding_example_equals_dense_reference(mode, backend):
    x, edge_index, batch, edge_type = _typed_batch(1)
    assert GraphStructure.build(edge_index, x.size(0)).has_parallel_edges
    torch.manual_seed(1)
    layer = GraphAttention(16, 4, heads=2, num_edge_types=3, max_distance=2)
    layer.backend = backend
    structure = GraphStructure.build(
        edge_index, x.size(0), batch, mode=mode, max_distance=2, flex=backend == "flex"
    )
    expected = _gated_reference(layer, x, edge_index, edge_type, batch, mode, 2)
    if backend == "flex":  # CPU FlexAttention: forward only
        with torch.no_grad():
            out = layer(x, structure, edge_type=edge_type)
        assert torch.allclose(out, expected, atol=1e-5)
        return
    out = layer(x, structure, edge_type=edge_type)
    assert torch.allclose(out, expected, atol=1e-5)
    out.square().sum().backward()
    type_grad = layer.type_gate.weight.grad.clone()
    distance_grad = layer.distance_gate.weight.grad.clone()
    expected.square().sum().backward()  # the reference's gradients accumulate on top
    assert type_grad.abs().sum() > 0 and distance_grad.abs().sum() > 0
    assert torch.allclose(layer.type_gate.weight.grad, 2 * type_grad, atol=1e-4)
    assert torch.allclose(layer.distance_gate.weight.grad, 2 * distance_grad, atol=1e-4)


# ------------------------------------------------------------------- forward keyword routing
class _MaskedTypeAttention(MuPFlexAttention):
    """A mask that takes no keyword beside a score mod that takes ``edge_type``."""

    def score_mod(self, structure, edge_type):
        self.seen_edge_type = edge_type
        return None

    def mask_mod(self, structure):
        def not_self(b, h, q, kv):
            return q != kv

        return not_self


def test_forward_keywords_reach_only_the_hooks_that_declare_them():
    x, edge_index, batch, edge_type = _typed_batch(2)
    structure = GraphStructure.build(edge_index, x.size(0), batch, mode="global")
    torch.manual_seed(2)
    layer = _MaskedTypeAttention(16, 4, heads=2, backend="message_passing")
    out = layer(x, structure, edge_type=edge_type)
    assert layer.seen_edge_type is edge_type
    plain = MuPFlexAttention(16, 4, heads=2, backend="message_passing")
    plain.load_state_dict(layer.state_dict())
    assert not torch.allclose(out, plain(x, structure))  # the mask applied
    with pytest.raises(TypeError, match="'cutoff'"):
        layer(x, structure, edge_type=edge_type, cutoff=1.0)


def test_unknown_forward_keyword_raises_for_a_subclass_with_only_a_score_mod():
    """The founding example overrides score_mod only: the base class's mask_mod (which takes
    ``**inputs`` and ignores them) must not make every keyword welcome."""
    x, edge_index, batch, edge_type = _typed_batch(3)
    structure = GraphStructure.build(edge_index, x.size(0), batch, mode="global", max_distance=2)
    layer = GraphAttention(16, 4, heads=2, num_edge_types=3, max_distance=2)
    edge_distance = torch.zeros_like(edge_type)  # meant for GraphStructure.build
    with pytest.raises(TypeError, match="'edge_distance'"):
        layer(x, structure, edge_type=edge_type, edge_distance=edge_distance)


def test_edge_index_where_a_structure_is_expected_raises_clearly():
    x, edge_index, _, edge_type = _typed_batch(4)
    layer = GraphAttention(16, 4, heads=2, num_edge_types=3, max_distance=2)
    with pytest.raises(TypeError, match="structure must be a GraphStructure, got Tensor"):
        layer(x, edge_index, edge_type=edge_type)


# ------------------------------------------------------------------------------- distances
@pytest.mark.parametrize("mode", ["local", "global"])
def test_structure_distance_in_both_modes(mode):
    """``structure.distance(q, kv)`` at any slots: hop counts ``kv -> q`` in
    ``0 … max_distance + 1`` (local: 0/1 along edges, the caller's ``edge_distance`` capped
    at ``max_distance``, ``max_distance + 1`` off the edges), equal at the message-passing
    backend's own indices."""
    x, edge_index, batch, _ = _typed_batch(5)
    num_nodes, max_distance = x.size(0), 2
    generator = torch.Generator().manual_seed(5)
    edge_distance = None
    if mode == "local":
        edge_distance = torch.randint(0, 5, (edge_index.size(1),), generator=generator)
    structure = GraphStructure.build(
        edge_index,
        num_nodes,
        batch,
        mode=mode,
        max_distance=max_distance,
        edge_distance=edge_distance,
        flex=True,
    )
    if mode == "local":  # every (q, kv); parallel edges: the least of their distances
        least = torch.full((num_nodes * num_nodes,), max_distance + 1).scatter_reduce(
            0, edge_index[1] * num_nodes + edge_index[0], edge_distance, reduce="amin"
        )
        expected = least.clamp(max=max_distance).view(num_nodes, num_nodes)
        is_edge = torch.zeros(num_nodes, num_nodes, dtype=torch.bool)
        is_edge[edge_index[1], edge_index[0]] = True
        expected[~is_edge] = max_distance + 1
        pairs = torch.cartesian_prod(torch.arange(num_nodes), torch.arange(num_nodes)).t()
    else:
        expected = dense_distances(edge_index, num_nodes, max_distance)
        pairs = structure.attention_pairs_of_nodes().flip(0)  # (q, kv) of one graph
    q_nodes, kv_nodes = pairs
    slot = structure.layout.node_slot
    q, kv = (q_nodes, kv_nodes) if slot is None else (slot[q_nodes], slot[kv_nodes])
    distance = structure.distance(q, kv)
    assert torch.equal(distance, expected[q_nodes, kv_nodes])
    assert distance.min() == 0 and distance.max() == max_distance + 1

    bound = structure.bind("message_passing")
    own_q, own_kv = bound.message_passing_indices
    assert torch.equal(bound.distance(own_q, own_kv), structure.distance(own_q, own_kv))
