"""Sweeps on Optuna: tune at a small width and depth, hand the result to a large model.

``pyg-mup sweep`` / :func:`run_sweep`: one Optuna study per sweep folder; each trial is one
:func:`pyg_mup.train.train` run. A grid of axes (``GridSampler``) is a μTransfer sweep
(parametrization × width × layers × log2 lr × seed …); ranges with TPE (or any Optuna sampler)
tune at the base width. Outputs in the folder: the study (``study.journal`` unless ``storage``
is given), ``trials/<n>/`` (each run), ``trials.json``, ``transfer_width.png`` (and
``transfer_depth.png``), ``recipe.json`` for ``pyg-mup train --recipe``. trials.json and
recipe.json are rewritten as each trial ends; :func:`report_sweep` (``--report``) writes all
outputs from the storage without running anything.

Example::

    from pyg_mup.sweep import SweepSpec, run_sweep

    spec = SweepSpec(
        out="sweeps/esol",
        settings={"layers": 2, "epochs": 10},
        grid={"parametrization": ["mup", "sp"], "width": [32, 64, 128], "log2_lr": [-10, -8, -6]},
        workers=2,
    )
    report = run_sweep(spec)

Modules: :mod:`.space` (axes → settings), :mod:`.study` (storage, sampler, identity),
:mod:`.runner` (workers, signals, ``--report``), :mod:`.claims` (which trial next, killed
workers), :mod:`.trial` (one run), :mod:`.report` (trials.json, figures), :mod:`.recipe`
(recipe.json).
"""

from .recipe import load_recipe, recipe_values
from .runner import report_sweep, run_sweep
from .space import SweepError, SweepSpec

__all__ = ["SweepError", "SweepSpec", "load_recipe", "recipe_values", "report_sweep", "run_sweep"]
