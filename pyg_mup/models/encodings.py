"""Structural and positional node encodings: computed once per dataset, added to node embeddings.

A spec names one encoding:

- ``'rwse:K'``: random-walk structural encoding, the return probabilities of 1..K-step random
  walks (PyG :class:`~torch_geometric.transforms.AddRandomWalkPE`), stored as ``data.rwse``
  ``[N, K]``.
- ``'lap:K'``: the K first non-trivial eigenvectors of the symmetric normalised Laplacian (PyG
  :class:`~torch_geometric.transforms.AddLaplacianEigenvectorPE`), stored as ``data.lap_pe``
  ``[N, K]``; zero columns where a graph has fewer than ``K + 1`` nodes.
- ``'degree'``: Graphormer's centrality encoding, an embedding of the (clipped) in-degree,
  computed by the model from ``edge_index``: nothing is stored.

:func:`encoding_transform` is the dataset's ``pre_transform`` (deterministic, picklable, with a
``repr`` that names every stored encoding, so a processed cache can be keyed by it);
:func:`encodings_of` picks the stored tensors from a batch; :class:`NodeEncodings` maps them to
``[N, width]``. Its layers have a fixed fan-in and a fan-out of ``width``: under μP they are
input layers (one width dimension), initialised independently of width.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.transforms import AddLaplacianEigenvectorPE, AddRandomWalkPE, BaseTransform
from torch_geometric.utils import degree

ENCODING_KINDS = ("rwse", "lap", "degree")
_ATTR_NAMES = {"rwse": "rwse", "lap": "lap_pe"}
_SPEC = re.compile(r"(rwse|lap):([1-9][0-9]*)|degree")


@dataclass(frozen=True)
class Encoding:
    """One parsed encoding spec: ``kind`` in :data:`ENCODING_KINDS` and its size ``dim`` (walk
    steps for ``'rwse'``, eigenvectors for ``'lap'``, ``None`` for ``'degree'``)."""

    kind: str
    dim: int | None = None

    @property
    def attr_name(self) -> str | None:
        """The data attribute holding the stored ``[N, dim]`` tensor (``None``: nothing stored)."""
        return _ATTR_NAMES.get(self.kind)

    def __str__(self) -> str:
        return self.kind if self.dim is None else f"{self.kind}:{self.dim}"


def parse_encoding(spec: str | Encoding) -> Encoding:
    """``'rwse:16'`` → ``Encoding('rwse', 16)``, ``'lap:8'``, ``'degree'``; ``ValueError`` else."""
    if isinstance(spec, Encoding):
        return spec
    match = _SPEC.fullmatch(spec) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(
            f"encoding spec {spec!r} must be 'rwse:K' (K random-walk steps), 'lap:K' (K "
            "Laplacian eigenvectors) or 'degree', with K a positive int"
        )
    return Encoding("degree") if match[1] is None else Encoding(match[1], int(match[2]))


def parse_encodings(specs: Iterable[str | Encoding]) -> tuple[Encoding, ...]:
    """Parse every spec; a kind given twice is a ``ValueError`` (it would be stored once)."""
    if isinstance(specs, (str, Encoding)):
        specs = [specs]
    encodings = tuple(parse_encoding(s) for s in specs)
    kinds = [e.kind for e in encodings]
    for kind in kinds:
        if kinds.count(kind) > 1:
            raise ValueError(f"encoding specs {[str(e) for e in encodings]} give {kind!r} twice")
    return encodings


def canonical_signs(vectors: Tensor) -> Tensor:
    """Flip each column so that its entry of largest magnitude is positive.

    Eigenvectors are defined up to sign; this fixes one per graph, so processing is
    deterministic (PyG draws a random sign), and the model's random flips in training make the
    choice irrelevant to what it learns.
    """
    if vectors.numel() == 0:
        return vectors
    peak = vectors.gather(0, vectors.abs().argmax(0, keepdim=True))
    return vectors * torch.where(peak < 0, -1.0, 1.0).to(vectors.dtype)


class LaplacianEigenvectorPE(BaseTransform):
    """PyG's :class:`AddLaplacianEigenvectorPE` (undirected), for graphs of every size.

    A graph with ``N <= k`` nodes has only ``N - 1`` non-trivial eigenvectors (PyG's transform
    fails there: its ``k`` random signs do not broadcast against ``N - 1`` columns), so PyG is
    asked for those and the rest is zero-padded. Output ``data[attr_name]`` ``[N, k]``
    float32, with :func:`canonical_signs`; ARPACK (graphs of PyG's ``SPARSE_THRESHOLD`` nodes or
    more) starts from a fixed vector, so the result does not depend on any random state, and
    PyG's sign draw leaves the caller's torch RNG untouched.
    """

    def __init__(self, k: int, attr_name: str = "lap_pe") -> None:
        self.k = k
        self.attr_name = attr_name

    def forward(self, data: Data) -> Data:
        num_nodes = data.num_nodes
        k = min(self.k, num_nodes - 1)
        options = {}
        if num_nodes >= AddLaplacianEigenvectorPE.SPARSE_THRESHOLD:
            options["v0"] = np.random.default_rng(0).uniform(size=num_nodes)
        pyg = AddLaplacianEigenvectorPE(k, self.attr_name, is_undirected=True, **options)
        with torch.random.fork_rng(devices=[]):
            data = pyg(data)
        pe = canonical_signs(data[self.attr_name].to(torch.float32))
        data[self.attr_name] = torch.nn.functional.pad(pe, (0, self.k - k))
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k}, attr_name={self.attr_name!r})"


class EncodingTransform(BaseTransform):
    """Add every stored encoding of ``encodings`` to a graph (see the module doc).

    ``repr`` lists the specs, e.g. ``EncodingTransform(rwse:16, lap:8)``: PyG's own transforms
    print no arguments, so their ``repr`` cannot key a cache.
    """

    def __init__(self, encodings: Iterable[str | Encoding]) -> None:
        self.encodings = tuple(e for e in parse_encodings(encodings) if e.attr_name is not None)
        if not self.encodings:
            raise ValueError("EncodingTransform needs a stored encoding: 'rwse:K' or 'lap:K'")
        self.transforms = [
            AddRandomWalkPE(e.dim, attr_name=e.attr_name)
            if e.kind == "rwse"
            else LaplacianEigenvectorPE(e.dim, attr_name=e.attr_name)
            for e in self.encodings
        ]

    def forward(self, data: Data) -> Data:
        for transform in self.transforms:
            data = transform(data)
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(str, self.encodings))})"


def encoding_transform(specs: Iterable[str | Encoding]) -> EncodingTransform | None:
    """The ``pre_transform`` computing the stored encodings of ``specs``; ``None`` if there are
    none (no specs, or only ``'degree'``, which the model computes)."""
    encodings = parse_encodings(specs)
    if not any(e.attr_name for e in encodings):
        return None
    return EncodingTransform(encodings)


def encodings_of(batch: Data, specs: Iterable[str | Encoding]) -> dict[str, Tensor]:
    """``{attr_name: [N, dim] tensor}`` of the stored encodings of ``specs`` in a PyG batch."""
    out = {}
    for encoding in parse_encodings(specs):
        name = encoding.attr_name
        if name is None:
            continue
        value = getattr(batch, name, None)
        if value is None:
            raise ValueError(
                f"the batch has no {name!r} (encoding {encoding}): give the dataset "
                f"pre_transform=encoding_transform({[str(e) for e in parse_encodings(specs)]})"
            )
        if value.dim() != 2 or value.size(1) != encoding.dim:
            raise ValueError(
                f"batch.{name} has shape {tuple(value.shape)}, encoding {encoding} needs "
                f"[num_nodes, {encoding.dim}]: the dataset was processed with other specs"
            )
        out[name] = value
    return out


class NodeEncodings(nn.Module):
    r"""Map a batch's node encodings to ``[N, width]``, to be added to the node embedding.

    ``Σ_enc Linear_enc(pe_enc)`` over the stored encodings (``rwse``, ``lap_pe``) plus
    ``Embedding(min(in_degree, max_degree))`` for ``'degree'``. In training mode each graph's
    Laplacian eigenvectors get a random sign per column at every call (as GraphGPS does), so the
    model cannot rely on the arbitrary sign an eigensolver returns.

    Every weight has fan-in fixed (``K``, or a table row) and fan-out ``width``: μP input layers.
    PyTorch's fan-in ``Linear`` init and the ``N(0, 1)`` embedding init are width-independent.

    Args:
        specs: encoding specs (see :func:`parse_encoding`), at least one.
        width: output size.
        max_degree: in-degrees above it share the last embedding row.

    Shapes: ``encodings[attr_name]`` ``[N, K]``, ``edge_index`` ``[2, E]``, ``batch`` ``[N]``
    (graph of each node; ``None``: one graph) → ``[N, width]``.
    """

    def __init__(self, specs: Iterable[str | Encoding], width: int, max_degree: int = 64) -> None:
        super().__init__()
        self.encodings = parse_encodings(specs)
        if not self.encodings:
            raise ValueError("NodeEncodings needs at least one encoding spec")
        self.max_degree = max_degree
        self.lins = nn.ModuleDict(
            {e.attr_name: nn.Linear(e.dim, width) for e in self.encodings if e.attr_name}
        )
        has_degree = any(e.kind == "degree" for e in self.encodings)
        self.degree = nn.Embedding(max_degree + 1, width) if has_degree else None

    def reset_parameters(self) -> None:
        for lin in self.lins.values():
            lin.reset_parameters()
        if self.degree is not None:
            self.degree.reset_parameters()

    def forward(
        self,
        encodings: dict[str, Tensor],
        edge_index: Tensor,
        num_nodes: int,
        batch: Tensor | None = None,
    ) -> Tensor:
        terms = []
        for name, lin in self.lins.items():
            if name not in encodings:
                raise ValueError(f"encodings has no {name!r}; it has {sorted(encodings)}")
            value = encodings[name].to(lin.weight.dtype)
            if name == _ATTR_NAMES["lap"] and self.training:
                value = value * self._random_signs(value, batch)
            terms.append(lin(value))
        if self.degree is not None:
            in_degree = degree(edge_index[1], num_nodes, dtype=torch.long)
            terms.append(self.degree(in_degree.clamp(max=self.max_degree)))
        return sum(terms[1:], terms[0])

    @staticmethod
    def _random_signs(value: Tensor, batch: Tensor | None) -> Tensor:
        """``±1`` per graph and column, ``[N, K]``. A graph has at least one node, so ``N`` rows
        cover every graph id without reading ``batch.max()`` on the host."""
        num_rows = value.size(0) if batch is not None else 1
        signs = torch.randint(0, 2, (num_rows, value.size(1)), device=value.device)
        signs = (2 * signs - 1).to(value.dtype)
        return signs[batch] if batch is not None else signs

    def extra_repr(self) -> str:
        return f"specs={[str(e) for e in self.encodings]}, max_degree={self.max_degree}"
