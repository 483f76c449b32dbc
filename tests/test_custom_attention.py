"""A custom graph attention written only as mods: the MuPFlexAttention extension point."""

import pytest
import torch
from graphs import random_batch
from torch.nn import Parameter

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
