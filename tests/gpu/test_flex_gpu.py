"""Compiled FlexAttention on CUDA against the message-passing backend, forward and backward.

Skipped without CUDA (CI has none). Run on a GPU machine with
``python -m pytest -q tests/gpu -s``; each case prints its relative errors.
"""

import pytest
import torch

from pyg_mup import FlexGraphConv, GraphStructure

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2}
EDGE_OPTIONS = {"edge_dim": 16, "num_edge_types": 4, "max_distance": 5}


def molecule_batch(num_graphs: int, generator: torch.Generator, channels: int = 64):
    """Random trees with a few ring closures, 10–40 nodes each, edges in both directions."""
    sizes = torch.randint(10, 41, (num_graphs,), generator=generator)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    edges = []
    for graph, size in enumerate(sizes.tolist()):
        child = torch.arange(1, size)
        parent = (torch.rand(size - 1, generator=generator) * child).long()
        rings = torch.randint(0, size, (2, 2), generator=generator)
        pairs = torch.cat([torch.stack([parent, child]), rings], 1) + ptr[graph]
        edges.append(torch.cat([pairs, pairs.flip(0)], 1))
    edge_index = torch.cat(edges, 1)
    batch = torch.repeat_interleave(torch.arange(num_graphs), sizes)
    x = torch.randn(int(ptr[-1]), channels, generator=generator)
    return x, edge_index, batch


def relative_error(value: torch.Tensor, reference: torch.Tensor, floor: float = 0.0) -> float:
    """``‖value − reference‖ / max(‖reference‖, floor)``."""
    difference = (value.detach().float() - reference.detach().float()).norm()
    return float(difference / reference.detach().float().norm().clamp_min(max(floor, 1e-12)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["local", "global"])
@pytest.mark.parametrize("edges", [False, True], ids=["plain", "edge-features"])
def test_compiled_flex_matches_message_passing(dtype, mode, edges):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    generator = torch.Generator().manual_seed(0)
    x, edge_index, batch = molecule_batch(256, generator)
    options = EDGE_OPTIONS if edges else {}
    inputs = {}
    if edges:
        inputs["edge_attr"] = torch.randn(edge_index.size(1), 16, generator=generator)
        inputs["edge_type"] = torch.randint(0, 4, (edge_index.size(1),), generator=generator)
    device = torch.device("cuda")
    x, edge_index, batch = x.to(device), edge_index.to(device), batch.to(device)
    inputs = {name: value.to(device) for name, value in inputs.items()}

    torch.manual_seed(0)
    reference = FlexGraphConv(64, 32, heads=4, mode=mode, backend="message_passing", **options)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    reference = reference.to(device)
    flex = FlexGraphConv(64, 32, heads=4, mode=mode, backend="flex", **options).to(device)
    flex.load_state_dict(reference.state_dict())
    flex = flex.to(dtype)

    structure = GraphStructure.build(
        edge_index,
        x.size(0),
        batch,
        mode=mode,
        max_distance=options.get("max_distance"),
        flex=True,
    )
    x_ref = x.clone().requires_grad_()
    x_flex = x.to(dtype).requires_grad_()
    flex_inputs = {
        name: value.to(dtype) if value.is_floating_point() else value
        for name, value in inputs.items()
    }
    out_ref = reference(x_ref, edge_index, batch=batch, structure=structure, **inputs)
    out_flex = flex(x_flex, edge_index, batch=batch, structure=structure, **flex_inputs)
    grad = torch.randn(out_ref.shape, generator=generator).to(device)
    out_ref.backward(grad)
    out_flex.backward(grad.to(out_flex.dtype))

    # Per-parameter errors are floored at 2% of the whole gradient's norm: some gradients are
    # (nearly) zero because a softmax ignores shifts shared by a query's scores (a key bias, or a
    # distance bias when almost every pair has distance 1), and bf16 noise on them is meaningless.
    names = [name for name, _ in reference.named_parameters()]
    flex_params = dict(flex.named_parameters())
    ref_grads = [x_ref.grad] + [parameter.grad for _, parameter in reference.named_parameters()]
    flex_grads = [x_flex.grad] + [flex_params[name].grad for name in names]
    ref_all = torch.cat([g.float().flatten() for g in ref_grads])
    flex_all = torch.cat([g.float().flatten() for g in flex_grads])
    floor = 0.02 * float(ref_all.norm())
    errors = {
        "out": relative_error(out_flex, out_ref),
        "x.grad": relative_error(x_flex.grad, x_ref.grad),
        "all grads": relative_error(flex_all, ref_all),
    }
    for name, ref_grad, flex_grad in zip(names, ref_grads[1:], flex_grads[1:], strict=True):
        errors[f"{name}.grad"] = relative_error(flex_grad, ref_grad, floor)
    worst = max(errors, key=errors.get)
    print(f"\n{mode} edges={edges} {dtype}: worst {worst} {errors[worst]:.2e}; {errors}")
    assert errors[worst] < TOLERANCE[dtype], errors
