"""``OpCounter`` counts every kind of data-dependent op on tiny CPU examples, and none for
code with host-known shapes."""

import pytest
import torch

from pyg_mup.profiling import OpCounter

X = torch.arange(6.0)
MASK = X > 2
ONES = torch.ones(6, dtype=torch.long)

# (what the user writes, the op the counter must report)
SYNCING = {
    "nonzero": (lambda: X.nonzero(), "aten.nonzero.default"),
    "argwhere": (lambda: torch.argwhere(X), "aten.nonzero.default"),
    "where(mask)": (lambda: torch.where(MASK), "aten.nonzero.default"),
    "unique": (lambda: torch.unique(X), "aten._unique2.default"),
    "unique_inverse": (lambda: torch.unique(X, return_inverse=True), "aten._unique2.default"),
    "_unique": (lambda: torch._unique(X), "aten._unique.default"),
    "unique_dim": (lambda: torch.unique(X.view(2, 3), dim=0), "aten.unique_dim.default"),
    "unique_consecutive": (
        lambda: torch.unique_consecutive(X),
        "aten.unique_consecutive.default",
    ),
    "masked_select": (lambda: X.masked_select(MASK), "aten.masked_select.default"),
    "x[mask]": (lambda: X[MASK], "aten.index.Tensor"),
    "x[mask] = v": (lambda: X.clone().__setitem__(MASK, 0.0), "aten.index_put_.default"),
    "index_put(mask)": (
        lambda: X.index_put((MASK,), torch.tensor(1.0), accumulate=True),
        "aten.index_put.default",
    ),
    "repeat_interleave": (
        lambda: torch.repeat_interleave(X, ONES),
        "aten.repeat_interleave.Tensor",
    ),
    "repeat_interleave(repeats)": (
        lambda: torch.repeat_interleave(ONES),
        "aten.repeat_interleave.Tensor",
    ),
    "bincount": (lambda: torch.bincount(ONES), "aten.bincount.default"),
    "item": (lambda: X.sum().item(), "aten._local_scalar_dense.default"),
    "int": (lambda: int(X[1]), "aten._local_scalar_dense.default"),
    "bool": (lambda: bool(X[1]), "aten._local_scalar_dense.default"),
    "is_nonzero": (lambda: X[1].is_nonzero(), "aten._local_scalar_dense.default"),
    "if": (lambda: 1 if X[1] else 0, "aten._local_scalar_dense.default"),
    "equal": (lambda: torch.equal(X, X), "aten.equal.default"),
    "allclose": (lambda: torch.allclose(X, X), "aten.allclose.default"),
    "tolist": (lambda: X.tolist(), "Tensor.tolist"),
    "numpy": (lambda: X.numpy(), "Tensor.numpy"),
}


@pytest.mark.parametrize("case", SYNCING)
def test_counts_each_data_dependent_op_once(case):
    call, op = SYNCING[case]
    with OpCounter() as ops:
        call()
    assert ops.data_dependent == {op: 1}
    if not op.startswith("Tensor."):  # the two host reads that bypass the dispatcher
        assert ops.counts[op] == 1


def test_a_device_to_cpu_copy_is_a_host_read():
    # no GPU here: a meta tensor stands for a device one; the copy itself then fails
    device_tensor = torch.empty(2, device="meta")
    with OpCounter() as ops, pytest.raises(NotImplementedError):
        device_tensor.to("cpu")
    assert ops.data_dependent == {"aten._to_copy.default": 1}


def test_counts_zero_on_host_known_shapes():
    """A segment mean with sizes known on the host (``ptr``), forward and backward: the
    pattern of a sync-free step, with the known-size variants of the ops above."""
    x = torch.randn(6, 3, requires_grad=True)
    sizes = [2, 4]
    with OpCounter() as ops:
        batch = torch.repeat_interleave(torch.tensor(sizes), output_size=6)
        total = torch.zeros(2, 3).index_add(0, batch, x)
        mean = total / torch.tensor(sizes, dtype=x.dtype).unsqueeze(1)
        picked = x[torch.tensor([0, 5])]  # integer indexing: a known length
        masked = x.masked_fill(x > 0, 0.0)  # a mask that keeps the shape
        (mean.sum() + picked.sum() + masked.sum()).backward()
        x.to(torch.float64)  # a CPU → CPU dtype copy
    assert ops.data_dependent == {}
    assert ops.total == sum(ops.counts.values()) > 10
    assert ops.counts["aten.repeat_interleave.Tensor"] == 1
    assert ops.counts["aten.index.Tensor"] == 1


def test_counts_are_per_counter():
    with OpCounter() as first:
        X.nonzero()
    with OpCounter() as second:
        X + 1
    assert first.data_dependent == {"aten.nonzero.default": 1}
    assert second.data_dependent == {} and second.counts == {"aten.add.Tensor": 1}


def test_entering_a_counter_again_adds_to_it():
    # bench_train enters one counter per phase of every step
    ops = OpCounter()
    for _ in range(2):
        with ops:
            X.nonzero()
    assert ops.data_dependent == {"aten.nonzero.default": 2} and ops.total == 2


def test_nested_counters_both_count():
    with OpCounter() as outer:
        X + 1
        with OpCounter() as inner:
            X.nonzero()
    assert inner.total == 1 and outer.total == 2
    assert outer.data_dependent == inner.data_dependent == {"aten.nonzero.default": 1}
