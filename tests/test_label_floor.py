"""``benchmarks/label_floor.py``: graphs a message-passing model cannot tell apart share a WL
hash, and the floor is the loss of predicting each such group's mean label."""

import math

import pytest
import torch
from torch_geometric.data import Data


@pytest.fixture(scope="module")
def floor(benchmark_script):
    return benchmark_script("label_floor")


def path(features: list[int], order: list[int]) -> Data:
    """A path graph over ``features`` (one int per node), its nodes stored in ``order``."""
    n = len(features)
    where = {node: i for i, node in enumerate(order)}
    edges = [(where[a], where[a + 1]) for a in range(n - 1)]
    edge_index = torch.tensor(edges + [(b, a) for a, b in edges]).t()
    x = torch.tensor([[features[node]] for node in order])
    return Data(x=x, edge_index=edge_index, edge_attr=torch.ones(edge_index.size(1), 1))


def test_wl_hash_ignores_node_order_but_sees_features(floor):
    a = floor.wl_hash(path([1, 2, 3], [0, 1, 2]), iterations=2)
    assert a == floor.wl_hash(path([1, 2, 3], [2, 0, 1]), iterations=2)
    assert a != floor.wl_hash(path([1, 3, 2], [0, 1, 2]), iterations=2)


def test_floor_is_the_loss_of_each_groups_mean_label(floor):
    twins = torch.tensor([[0.0], [2.0]])  # one group, two labels: residuals ±1
    single = torch.tensor([[5.0]])  # fitted exactly
    labels = torch.tensor([0.0, 2.0, 5.0])
    std = labels.std(correction=0).item()
    assert floor.floor_loss([twins, single], regression=True) == pytest.approx(2 / std**2 / 3)
    binary = torch.tensor([[1.0, math.nan], [0.0, 1.0]])  # task 0 split, task 1 one label
    expected = 2 * math.log(2) / 3  # two entries at p = 1/2, one fitted exactly
    assert floor.floor_loss([binary], regression=False) == pytest.approx(expected, rel=1e-5)
