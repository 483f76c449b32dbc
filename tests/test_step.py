"""The training step: no host syncs given a collated batch, and a model that compiles whole.

A CUDA step is host-bound when the host waits for the device (benchmarks/README.md: device busy
6–9 % of the step on an H200). Every op whose output shape depends on tensor values, and every
read of a value on the host, is such a wait; on the CPU :class:`~pyg_mup.profiling.OpCounter`
finds them all, so these tests hold the step to zero on any machine.
"""

from __future__ import annotations

import pytest
import torch

from pyg_mup.data import load_dataset
from pyg_mup.graph import StructureCollater
from pyg_mup.models import GraphTransformer
from pyg_mup.mup import MuAdamW, build_mup_model
from pyg_mup.profiling import OpCounter


@pytest.fixture(scope="module")
def graphs():
    dataset = load_dataset("ogbg-molesol").dataset
    return [dataset[i] for i in range(24)]


def _model(attention: str, backend: str = "auto", layers: int = 2, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_mup_model(
        lambda width: GraphTransformer(
            1,
            width=width,
            layers=layers,
            heads=2,
            attention=attention,
            dropout=0.1,
            backend=backend,
            **options,
        ),
        width=32,
        base_width=16,
    )


def _loss(forward, item) -> torch.Tensor:
    """The regression loss of ``forward`` (a model, or its compiled version) on a collated batch."""
    batch = item.batch
    pred = forward(
        batch.x,
        batch.edge_index,
        batch.edge_attr,
        batch.batch,
        num_graphs=batch.num_graphs,
        num_nodes=batch.num_nodes,
        structures=item.structures,
    )
    return torch.nn.functional.mse_loss(pred.squeeze(1), batch.y.squeeze(1))


def _step(model, optimizer, item) -> torch.Tensor:
    loss = _loss(model, item)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.detach()


@pytest.mark.parametrize(
    ("attention", "options"),
    [
        ("local", {}),
        ("global", {}),
        ("both", {}),
        ("both", {"local_branch": "gine", "virtual_node": True}),  # the hybrid of the results
    ],
)
def test_training_step_has_no_data_dependent_ops(graphs, attention, options):
    model = _model(attention, **options)
    optimizer = MuAdamW(model, lr=1e-3, fused=True)  # torch's default Adam reads `step`
    collate = StructureCollater(model.structure_spec("cpu"))
    _step(model, optimizer, collate(graphs[:8]))  # optimizer state exists from here on
    item = collate(graphs[8:16])
    with OpCounter() as ops:
        _step(model, optimizer, item)
    assert ops.total > 100  # the counter saw the step
    assert not ops.data_dependent, dict(ops.data_dependent)


@torch.no_grad()
def test_global_forward_on_flex_attention_has_no_data_dependent_ops(graphs):
    """The global model on FlexAttention (block masks built in the collate, as for CUDA; eager
    and forward-only on the CPU): the counter goes through each layer's FlexAttention call
    and finds no data-dependent op, and counting leaves the predictions unchanged. Dynamo's
    state is reset first: once FlexAttention's compiled wrapper has seen another ``scale``
    (other tests), dynamo makes the float an input tensor read with ``.item()`` in the graph."""
    torch._dynamo.reset()
    model = _model("global", backend="flex").eval()  # eval: no attention dropout
    item = StructureCollater(model.structure_spec("cuda"))(graphs[8:16])
    expected = _loss(model, item)
    with OpCounter() as ops:
        loss = _loss(model, item)
    assert torch.equal(loss, expected)
    assert ops.counts["higher_order.flex_attention"] == 2  # one per layer
    assert not ops.data_dependent, dict(ops.data_dependent)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("layers", "options"), [(1, {}), (2, {"local_branch": "gine", "virtual_node": True})]
)
def test_compiled_model_has_no_graph_break_and_trains_like_eager(graphs, layers, options):
    """``torch.compile(fullgraph=True)`` of the model on the message-passing backend: no graph
    break (fullgraph raises on one), and a few training steps give eager's losses. One batch
    for every step: each new shape would compile again, and compile time is the test's cost.
    The hybrid has two blocks, so that the virtual node is updated between them."""
    eager = _model("both", backend="message_passing", layers=layers, **options)
    compiled = _model("both", backend="message_passing", layers=layers, **options)
    compiled.load_state_dict(eager.state_dict())
    for model in (eager, compiled):  # dropout off: the two must see the same function
        model.eval()
    step_of = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        forward = (
            torch.compile(model, fullgraph=True, dynamic=False) if name == "compiled" else model
        )
        optimizer = MuAdamW(model, lr=1e-3, fused=True)
        item = StructureCollater(model.structure_spec("cpu"))(graphs[:8])
        losses = []
        for _ in range(3):
            loss = _loss(forward, item)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        step_of[name] = losses
    assert step_of["compiled"] == pytest.approx(step_of["eager"], abs=1e-5)
