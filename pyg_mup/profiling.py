"""Count the ops a piece of code dispatches, and among them the ones that stall a device queue.

A CUDA step is host-bound when the host waits on the device: every op whose output shape
depends on tensor *values* (the host must read them to allocate the output) and every read of a
value on the host drains the queue first. :class:`OpCounter` finds them on any device, CPU
included, so a test on CPU can assert that a training step has none::

    with OpCounter() as ops:
        loss = model(batch).sum()
        loss.backward()
    assert not ops.data_dependent, ops.data_dependent

It sees ops at the dispatcher (``TorchDispatchMode``), below autograd: the backward's ops are
counted too, and composite ops appear as what they decompose into (``torch.argwhere`` and
``torch.where(mask)`` as ``aten.nonzero``, ``Tensor.item()``, ``int()``, ``bool()`` and
``is_nonzero`` of a tensor as ``aten._local_scalar_dense``). Two host reads of CPU tensors bypass
the dispatcher, ``Tensor.tolist`` and ``Tensor.numpy``; a ``TorchFunctionMode`` entered with the
counter catches them.

Higher-order operators (FlexAttention's forward and backward, eager) count as one op each
(``'higher_order.flex_attention'``), and the ops of the implementation they run as ops of their
own. ``torch.compile``'d code runs compiled under the counter, which sees what it dispatches at
run time (extern kernels, the ops between graphs, syncs included) but not its fused kernels, nor
the compiling; dynamo guards on the function mode, so code compiled before counting compiles
once more under the counter.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch._C import DispatchKey
from torch._ops import HigherOrderOperator, _compute_keyset
from torch._subclasses.fake_tensor import FakeTensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack

aten = torch.ops.aten

# Ops whose output shape is a function of tensor values: the host reads those values (on CUDA:
# waits for every queued kernel) before it can allocate the output.
VALUE_SHAPED = {
    aten.nonzero.default,  # one row per non-zero element
    aten._unique.default,  # the number of distinct values (torch.unique, older overload)
    aten._unique2.default,  # the number of distinct values (torch.unique)
    aten.unique_dim.default,  # the number of distinct slices (torch.unique(dim=...))
    aten.unique_consecutive.default,  # the number of runs
    aten.masked_select.default,  # one element per True in the mask
    aten.bincount.default,  # max(value) + 1 bins
}
# Ops that return a Python value read from a tensor: the host blocks until it is computed.
HOST_READS = {
    aten._local_scalar_dense.default,  # Tensor.item(), int(t), float(t), bool(t), `if t:`
    aten.equal.default,  # torch.equal returns a Python bool
    aten.is_nonzero.default,  # bool(t) where a backend dispatches it undecomposed
    aten.allclose.default,  # torch.allclose returns a Python bool
}
# Indexing ops that become data-dependent when an index is a boolean mask (x[mask],
# x[mask] = v): the mask is turned into the indices of its True elements (a nonzero) inside.
MASKABLE = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}
MASKABLE |= {aten._index_put_impl_.default}
COPIES = {aten._to_copy.default, aten.copy_.default}  # a device → CPU copy waits for the device


def is_data_dependent(func: Any, args: tuple, kwargs: dict) -> bool:
    """Whether one dispatched call ``func(*args, **kwargs)`` needs tensor values on the host:
    a value-shaped op, a host read, boolean-mask indexing, ``repeat_interleave(repeats)``
    without ``output_size`` (its length is ``repeats.sum()``), or a device → CPU copy."""
    if func in VALUE_SHAPED or func in HOST_READS:
        return True
    if func in MASKABLE:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
        )
    if func is aten.repeat_interleave.Tensor:
        return kwargs.get("output_size", args[1] if len(args) > 1 else None) is None
    if func in COPIES:
        source = args[1] if func is aten.copy_.default else args[0]
        target = args[0].device if func is aten.copy_.default else kwargs.get("device")
        return (
            source.device.type != "cpu"
            and target is not None
            and torch.device(target).type == "cpu"
        )
    return False


# Host reads that, on CPU tensors, read memory directly without dispatching an op.
OUTSIDE_DISPATCH = {torch.Tensor.tolist: "Tensor.tolist", torch.Tensor.numpy: "Tensor.numpy"}


class _HostReadsOutsideDispatch(TorchFunctionMode):
    """Counts the calls of :data:`OUTSIDE_DISPATCH` into an :class:`OpCounter`."""

    def __init__(self, counter: OpCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = OUTSIDE_DISPATCH.get(func)
        if name is not None:
            self.counter.data_dependent[name] += 1
        return func(*args, **(kwargs or {}))


class OpCounter(TorchDispatchMode):
    """A context manager that counts dispatched ops.

    Attributes:
        total: ops dispatched while it was active (forward and backward).
        counts: ``Counter`` of those ops by overload name (``'aten.mm.default'``).
        data_dependent: ``Counter`` of the calls that need tensor values on the host (see
            :func:`is_data_dependent`), by overload name, plus ``'Tensor.tolist'`` and
            ``'Tensor.numpy'``. Empty for a sync-free region.
    """

    # higher-order operators (FlexAttention's) come to __torch_dispatch__: see _higher_order
    supports_higher_order_operators = True

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.counts: Counter[str] = Counter()
        self.data_dependent: Counter[str] = Counter()
        self._function_mode = _HostReadsOutsideDispatch(self)

    def __enter__(self) -> OpCounter:
        self._function_mode.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._function_mode.__exit__(*exc)

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        """Let ``torch.compile`` compile and run its code while the counter is on (the counter
        sees what compiled code dispatches at run time, not what compiling it does). With the
        default, dynamo skips every frame under the mode and marks its code to be skipped for
        good (pytorch/pytorch#190286): compiled FlexAttention stayed eager after a counted
        step, and its next call failed tracing the dense implementation."""
        return True

    def _count(self, name: str) -> None:
        self.total += 1
        self.counts[name] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if any(issubclass(t, FakeTensor) for t in types):
            return func(*args, **kwargs)  # tracing (a HOP's mods through make_fx), not running
        if isinstance(func, HigherOrderOperator):
            return self._higher_order(func, args, kwargs)
        name = str(func)
        self._count(name)
        if is_data_dependent(func, args, kwargs):
            self.data_dependent[name] += 1
        return func(*args, **kwargs)

    def _higher_order(self, func: HigherOrderOperator, args: tuple, kwargs: dict) -> Any:
        """Count a higher-order operator as one op (``'higher_order.flex_attention'``), here and
        in the counters entered before this one, then run the kernel it has below the mode
        (FlexAttention's dense implementation) with this counter back on: its ops are counted
        as ops of their own, data-dependent ones included."""
        name = f"higher_order.{func.name()}"
        below = _get_current_dispatch_mode_stack()  # this counter is off while it runs
        for counter in (self, *(mode for mode in below if isinstance(mode, OpCounter))):
            counter._count(name)
        keys = _compute_keyset(args, kwargs, func.non_fallthrough_keys)
        below_modes = keys & torch._C._dispatch_keyset_full_after(DispatchKey.Python)
        TorchDispatchMode.__enter__(self)  # not self.__enter__: the function mode is still on
        try:
            return func.dispatch(below_modes.highestPriorityTypeId(), *args, **kwargs)
        finally:
            TorchDispatchMode.__exit__(self, None, None, None)
