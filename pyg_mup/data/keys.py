"""The key of a processed cache: a stable description of its ``pre_transform``, and the
processed folder named after it (one folder per transform)."""

from __future__ import annotations

import functools
import hashlib
import re
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def describe_transform(transform: Callable[..., Any] | None) -> str:
    """A stable text for ``transform`` that changes whenever its settings or code do.

    It keys the processed cache, so it must not be ``repr``: PyG transforms print without their
    arguments (``AddRandomWalkPE(walk_length=4)`` and ``(walk_length=8)`` both print
    ``AddRandomWalkPE()``). Objects are described by their class and, recursively, their
    attributes; functions (and a transform class's ``forward``) by their qualified name and a
    digest of their byte code and constants; tensors by dtype, shape and a digest of their bytes.
    No memory address enters it, so it is the same in every process.
    """
    return _describe(transform, frozenset())


def _describe(obj: Any, seen: frozenset[int]) -> str:
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return repr(obj)
    if id(obj) in seen:
        return "<cycle>"
    seen = seen | {id(obj)}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_describe(item, seen) for item in obj]
        items = sorted(items) if isinstance(obj, (set, frozenset)) else items
        return f"{type(obj).__name__}[{', '.join(items)}]"
    if isinstance(obj, dict):
        items = sorted(f"{_describe(k, seen)}: {_describe(v, seen)}" for k, v in obj.items())
        return f"dict{{{', '.join(items)}}}"
    if isinstance(obj, torch.Tensor):
        data = obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        return f"tensor({obj.dtype}, {tuple(obj.shape)}, {hashlib.sha256(data).hexdigest()[:16]})"
    if isinstance(obj, np.ndarray):
        return _describe(torch.from_numpy(np.ascontiguousarray(obj)), seen)
    if isinstance(obj, functools.partial):
        return f"partial({_describe([obj.func, obj.args, obj.keywords], seen)})"
    if isinstance(obj, types.MethodType):
        return f"{_describe(obj.__self__, seen)}.{_describe(obj.__func__, seen)}"
    if isinstance(obj, types.FunctionType):
        cells = [cell.cell_contents for cell in obj.__closure__ or ()]
        extras = _describe([obj.__defaults__, obj.__kwdefaults__, cells], seen)
        return f"{obj.__module__}.{obj.__qualname__}#{_code_digest(obj.__code__)}{extras}"
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    cls = type(obj)
    name = f"{cls.__module__}.{cls.__qualname__}"
    methods = [getattr(cls, attr, None) for attr in ("forward", "__call__")]
    method = next((m for m in methods if isinstance(m, types.FunctionType)), None)
    if method is not None:
        name += f"#{_code_digest(method.__code__)}"
    state = getattr(obj, "__dict__", None)
    if state is None:
        return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))
    return f"{name}({', '.join(f'{k}={_describe(v, seen)}' for k, v in sorted(state.items()))})"


def _code_digest(code: types.CodeType) -> str:
    """Byte code, names and constants (nested functions included). Not ``marshal``: its output
    depends on reference counts, so it differs between processes."""
    digest = hashlib.sha256(code.co_code)
    digest.update(repr((code.co_names, code.co_varnames)).encode())
    for const in code.co_consts:
        digest.update(
            _code_digest(const).encode()
            if isinstance(const, types.CodeType)
            else repr(const).encode()
        )
    return digest.hexdigest()[:16]


def processed_name(pre_transform: Callable[..., Any] | None) -> str:
    """The processed folder for ``pre_transform``: ``processed`` without one (as plain ``ogb``),
    else ``processed_<digest of describe_transform(pre_transform)>``."""
    if pre_transform is None:
        return "processed"
    digest = hashlib.sha256(describe_transform(pre_transform).encode()).hexdigest()[:16]
    return f"processed_{digest}"
