"""``OpCounter`` counts every kind of data-dependent op on tiny CPU examples, and none for
code with host-known shapes."""

import contextlib
import importlib
from pathlib import Path

import pytest
import torch
from graphs import random_batch
from torch._dynamo.testing import CompileCounter
from torch._higher_order_ops.flex_attention import flex_attention as flex_attention_hop
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from pyg_mup import FlexGraphConv, GraphStructure
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


# ------------------------------------------------ FlexAttention: a higher-order op, and compiled
def _flex_inputs(n: int = 32) -> tuple:
    """``(query, key, value, block_mask, score_mod)``: causal blocks of 16, a learned-looking
    bias per key read from a captured tensor (a gather inside the mod)."""
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 2, n, 16, generator=generator) for _ in range(3))
    bias = torch.randn(n, generator=generator)
    mask = create_block_mask(causal, 1, 1, n, n, device="cpu", BLOCK_SIZE=16)
    return query, key, value, mask, lambda score, b, h, q, kv: score + bias[kv]


def causal(b, h, q, kv):
    return q >= kv


@torch.no_grad()
def test_counts_flex_attention_as_one_op_and_the_ops_inside():
    """FlexAttention's higher-order operator reaches the counter (eager on the CPU): it counts as
    one op, its dense implementation's ops (its softmax, the mod's gather) as ops of their own,
    none of them data-dependent, and the output is unchanged."""
    query, key, value, mask, score_mod = _flex_inputs()
    expected = flex_attention(query, key, value, score_mod=score_mod, block_mask=mask)
    with OpCounter() as ops:
        out = flex_attention(query, key, value, score_mod=score_mod, block_mask=mask)
    assert torch.equal(out, expected)
    assert ops.counts["higher_order.flex_attention"] == 1
    assert ops.counts["aten._safe_softmax.default"] == 1
    assert ops.counts["aten.index.Tensor"] >= 1  # bias[kv]
    assert ops.data_dependent == {}


@torch.no_grad()
def test_syncs_around_flex_attention_are_counted():
    query, key, value, mask, score_mod = _flex_inputs()
    with OpCounter() as ops:
        out = flex_attention(query, key, value, score_mod=score_mod, block_mask=mask)
        out.sum().item()
        out.nonzero()
        out.tolist()
    assert ops.data_dependent == {
        "aten._local_scalar_dense.default": 1,
        "aten.nonzero.default": 1,
        "Tensor.tolist": 1,
    }


def test_flex_attention_backward_counts_in_nested_counters():
    """The backward's higher-order operator too, with gradients unchanged, and in both of two
    nested counters (``bench_train`` nests a counter per phase in the step's). Called through
    the operator that ``flex_attention`` dispatches to: its Python API refuses gradients on the
    CPU, the operator's dense implementation has them."""
    query, key, value, mask, _ = _flex_inputs()
    bias = torch.randn(query.size(2), requires_grad=True)
    inputs = [t.requires_grad_() for t in (query, key, value)] + [bias]

    def attend() -> torch.Tensor:
        score_mod = lambda score, b, h, q, kv, bias: score + bias[kv]  # noqa: E731
        return flex_attention_hop(*inputs[:3], score_mod, mask.as_tuple(), 0.25, {}, (bias,))[0]

    expected = torch.autograd.grad(attend().sum(), inputs)
    with OpCounter() as step:
        with OpCounter() as forward:
            out = attend()
        with OpCounter() as backward:
            grads = torch.autograd.grad(out.sum(), inputs)
    assert all(torch.allclose(g, e) for g, e in zip(grads, expected, strict=True))
    assert forward.counts["higher_order.flex_attention"] == 1
    assert backward.counts["higher_order.flex_attention_backward"] == 1
    assert step.counts["higher_order.flex_attention"] == 1
    assert step.counts["higher_order.flex_attention_backward"] == 1
    assert step.total == forward.total + backward.total
    # the mod's tracing on fake tensors (make_fx, every call with gradients) is not counted
    assert "prim.device.default" not in forward.counts
    assert step.data_dependent == {}


@pytest.mark.parametrize("mode", ["local", "global"])
@torch.no_grad()
def test_flex_graph_conv_with_a_prebuilt_structure_has_no_data_dependent_ops(mode):
    generator = torch.Generator().manual_seed(0)
    x, edge_index, batch = random_batch([9, 14, 5], 10, generator)
    structure = GraphStructure.build(
        edge_index, x.size(0), batch, mode=mode, block_size=16, max_distance=3, flex=True
    )
    torch.manual_seed(0)
    conv = FlexGraphConv(8, 16, heads=2, mode=mode, max_distance=3, backend="flex")
    expected = conv(x, structure=structure)
    with OpCounter() as ops:
        out = conv(x, structure=structure)
    assert torch.equal(out, expected)
    assert ops.counts["higher_order.flex_attention"] == 1
    assert ops.data_dependent == {}, dict(ops.data_dependent)


@torch.no_grad()
def test_compiled_flex_attention_stays_compiled_after_a_counted_call():
    """A compiled function called under the counter is compiled (not skipped), and called
    again without it still runs its compiled code: dynamo marks the code of a frame it skips
    for a dispatch mode to be skipped for good, and compiled FlexAttention then failed in
    ``bench_train --profile`` after ``--count-steps``. The counter's function mode is part
    of dynamo's guards: a compile under it, none after."""
    query, key, value, mask, score_mod = _flex_inputs()
    backend = CompileCounter()
    compiled = torch.compile(flex_attention, backend=backend)
    expected = compiled(query, key, value, score_mod=score_mod, block_mask=mask)
    with OpCounter() as ops:
        counted = compiled(query, key, value, score_mod=score_mod, block_mask=mask)
    compiles = backend.frame_count
    out = compiled(query, key, value, score_mod=score_mod, block_mask=mask)
    assert torch.equal(counted, expected) and torch.equal(out, expected)
    assert backend.frame_count == compiles
    assert ops.counts["higher_order.flex_attention"] == 1 and ops.data_dependent == {}


def test_compiling_is_not_counted_and_syncs_in_compiled_code_are():
    backend = CompileCounter()
    compiled = torch.compile(lambda x: x.sum().item() + x.nonzero().size(0), backend=backend)
    with OpCounter() as first:  # compiles
        compiled(X)
    assert backend.frame_count > 0  # compiled, not skipped for the mode
    with OpCounter() as second:
        compiled(X)
    assert first.counts == second.counts
    assert first.data_dependent == {
        "aten._local_scalar_dense.default": 1,
        "aten.nonzero.default": 1,
    }


def test_count_ops_then_profile_steps_through_compiled_flex_attention(monkeypatch):
    """``bench_train --count-steps 2 --profile 3``'s order on a step whose attention is compiled
    FlexAttention (the H200's 'ours-both', issue 16): the counted steps run, the profiled ones
    after them too, on the code compiled before (no compile), with unchanged results."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1]))  # benchmarks.* imports
    train_profile = importlib.import_module("benchmarks.train_profile")
    query, key, value, mask, score_mod = _flex_inputs()
    compiled = torch.compile(flex_attention, backend=CompileCounter())
    results = []

    def step(batch: torch.Tensor, phase) -> torch.Tensor:
        with phase("forward"), torch.no_grad():
            results.append(compiled(batch, key, value, score_mod=score_mod, block_mask=mask))
        return results[-1].sum()

    step(query, lambda name: contextlib.nullcontext())  # the timed passes compiled it
    ops = train_profile.count_ops(step, [query] * 2, 2, [])
    profile = train_profile.profile_steps(step, [query] * 3, torch.device("cpu"), 3, [], None)
    assert ops["steps"] == 2 and ops["data_dependent_per_step"] == 0
    assert ops["ops_per_step_by_phase"]["forward"] > 0
    assert profile["steps"] == 3 and profile["compiles"] == 0
    assert profile["ranges"]["forward"]["calls_per_step"] == 1
    assert all(torch.equal(out, results[0]) for out in results)
