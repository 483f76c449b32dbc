"""Graph batches → attention structures, one job per module.

- :mod:`.checks`: input validation (one line, naming the argument).
- :mod:`.pairs`: parallel edges → unique pairs with a multiplicity.
- :mod:`.layout`: where nodes sit in the attention sequence (``'rcm'``, ``'pack'``).
- :mod:`.blocks`: FlexAttention ``BlockMask`` from block lists.
- :mod:`.lookup`: pair look-ups inside FlexAttention mods (tiles, hash).
- :mod:`.distance`: hop distances (a ``pre_transform``, or relaxation passes).
- :mod:`.tables`: per-pair tables of learned values and their fast-backward gather.
- :mod:`.structure`: the interface attention reads, and :meth:`GraphStructure.build`;
  :mod:`.local_structure` / :mod:`.global_structure`: its two kinds.
- :mod:`.collate`: structures built in the ``DataLoader``, moved with the batch.
"""

from .collate import StructureCollater, StructuredBatch, StructureLoader, StructureSpec, transfer
from .distance import AddHopDistance
from .global_structure import GlobalStructure
from .local_structure import LocalStructure
from .structure import MODES, GraphStructure

__all__ = [
    "MODES",
    "AddHopDistance",
    "GlobalStructure",
    "GraphStructure",
    "LocalStructure",
    "StructureCollater",
    "StructureLoader",
    "StructureSpec",
    "StructuredBatch",
    "transfer",
]
