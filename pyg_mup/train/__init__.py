"""Training on OGB datasets: ``pyg-mup train`` / ``python -m pyg_mup.train`` / :func:`train`.

Modules, one job each: :mod:`.config` (settings and their checks), :mod:`.settings` (the
settings by name, group and command-line text), :mod:`.resume` (what ``--resume`` may
change), :mod:`.factory` (model, optimizer, schedule),
:mod:`.objective` (losses and Evaluator inputs per task), :mod:`.workload` (batches, shards,
evaluation), :mod:`.loop` (the run), :mod:`.checkpoint` (atomic files, RNG states),
:mod:`.rundir` (the output folder), :mod:`.report` (console lines, metrics and summary),
:mod:`.progress` (where the run is), :mod:`.stopping` (signals, time budget),
:mod:`.distributed` (``torchrun`` process groups).

Example::

    from pyg_mup.train import TrainConfig, train

    summary = train(TrainConfig(dataset="ogbg-molesol", epochs=5, out="runs/esol"))
    print(summary["metric"], summary["test_at_best_valid"])
"""

from .checkpoint import CheckpointError
from .config import ConfigError, TrainConfig
from .loop import train
from .rundir import RunDirError, read_metrics

__all__ = [
    "CheckpointError",
    "ConfigError",
    "RunDirError",
    "TrainConfig",
    "read_metrics",
    "train",
]
