"""The settings of a training run, their defaults and their checks.

Defaults train the embedded dataset (``ogbg-molesol``) on two CPU cores in a few minutes.
Each field is declared once with :func:`setting`; :mod:`.settings` turns the declarations into
flags, sweep axes and recipe keys, and :mod:`.resume` says which may change on ``--resume``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pyg_mup.data import EMBEDDED_DATASET, dataset_level
from pyg_mup.models import ATTENTION_KINDS
from pyg_mup.models.encodings import parse_encodings
from pyg_mup.models.local_branch import LOCAL_BRANCH_KINDS

NODE_BATCHING = ("auto", "full", "sampled")
GRAPH_LEVEL_SETTINGS = (
    "model",
    "attention",
    "local_branch",
    "pe",
    "attention_dropout",
    "virtual_node",
    "match_parameters",
)
"""Model settings the graph-level models read and the ``ogbn-*`` NodeTransformer has not."""
LR_SCHEDULES = ("constant", "cosine")
FULL_GRAPH_MAX_EDGES = 5_000_000
"""``--node-batching auto`` trains full-graph up to this many edges, with sampling beyond."""


class ConfigError(ValueError):
    """Settings that cannot make a run, with a one-line message."""


GROUPS = ("data", "model", "optimisation", "run")
"""Settings by group: *model* and *optimisation* settings make the recipe a sweep hands on
(:data:`~.settings.RECIPE_KEYS`); *data* and *run* settings say what to train on and where,
not how."""

DEPTH_PARAMETRIZATIONS = ("none", "depth-mup", "completep")


def setting(
    default: Any,
    group: str,
    help: str,
    *,
    metavar: str | None = None,
    choices: tuple[Any, ...] | None = None,
    parse: Any = None,
    flag: str = "value",
) -> Any:
    """A :class:`TrainConfig` field with what the parser, the sweep and the recipe need.

    Args:
        group: one of :data:`GROUPS`.
        help: the ``--help`` text (``(default: …)`` is appended unless the text gives one).
        parse: text → value for flags whose type is not the annotation's (e.g. ``15,10``).
        flag: ``'value'`` (``--name VALUE``), ``'switch'`` (``--name``/``--no-name``) or
            ``'store_true'`` (``--name`` only).
    """
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    meta = {
        "group": group,
        "help": help,
        "metavar": metavar,
        "choices": choices,
        "parse": parse,
        "flag": flag,
    }
    if isinstance(default, (list, tuple, dict)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def _neighbors(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(n) for n in text.split(","))
    except ValueError:
        raise ValueError(f"expected counts like 15,10, got {text!r}") from None


def _encoding_specs(text: str) -> tuple[str, ...]:
    specs = tuple(spec for spec in text.split(",") if spec)
    parse_encodings(specs)  # a bad spec fails here, naming itself
    return specs


MODEL_KINDS = ("transformer", "gine")


@dataclass
class TrainConfig:
    """Every setting of ``pyg-mup train``, declared once: each field's metadata (see
    :func:`setting`) generates its ``--flag``, its name in sweep search spaces and, for *model*
    and *optimisation* settings, its key in a sweep's recipe."""

    # data
    dataset: str = setting(
        EMBEDDED_DATASET,
        "data",
        "OGB dataset, e.g. ogbg-molhiv or ogbn-arxiv (default: "
        f"{EMBEDDED_DATASET}, shipped with the package); `pyg-mup datasets` lists them",
        metavar="NAME",
    )
    root: str | None = setting(
        None,
        "data",
        "folder holding <name with _>/ in OGB's layout, or where ogb may download it "
        "(default: the embedded copy, else ~/.cache/pyg_mup/ogb); read-only roots are copied",
        metavar="DIR",
    )
    cache_dir: str | None = setting(
        None,
        "data",
        "where read-only roots are copied (default: $PYG_MUP_CACHE or ~/.cache/pyg_mup)",
        metavar="DIR",
    )
    max_samples: int | None = setting(
        None, "data", "use only the first N graphs/nodes of each split (quick checks)", metavar="N"
    )
    num_workers: int = setting(0, "data", "DataLoader worker processes", metavar="N")
    node_batching: str = setting(
        "auto",
        "data",
        "ogbn-*: whole graph per step, or NeighborLoader mini-batches (default: auto, by size)",
        choices=NODE_BATCHING,
    )
    num_neighbors: tuple[int, ...] = setting(
        (15, 10),
        "data",
        "ogbn-* sampled batches: neighbours per hop (default: 15,10)",
        metavar="K1,K2",
        parse=_neighbors,
    )
    # model
    width: int = setting(128, "model", "model width")
    layers: int = setting(4, "model", "Transformer blocks")
    heads: int = setting(4, "model", "attention heads")
    attention: str = setting(
        "local",
        "model",
        "along edges, over whole graphs, or both summed (GPS)",
        choices=ATTENTION_KINDS,
    )
    max_distance: int = setting(
        5, "model", "hop distances embedded by global attention", metavar="D"
    )
    dropout: float = setting(0.0, "model", "dropout on residual branches and in the FFNs")
    mup: bool = setting(
        True,
        "model",
        "μP (default) or, with --no-mup, the standard-parametrization twin",
        flag="switch",
    )
    base_width: int = setting(64, "model", "μP base width: the width the learning rate is tuned at")
    output_mult: float = setting(
        1.0,
        "model",
        "the readout's output multiplier (μP's α_output: tuned at the base width and "
        "transferred like the lr)",
    )
    depth_parametrization: str = setting(
        "none",
        "model",
        "residual branches scaled for transfer across depth: depth-μP (×sqrt(L_base/L)) or "
        "CompleteP (×L_base/L), each with its Adam rules (pyg_mup.mup.depth)",
        choices=DEPTH_PARAMETRIZATIONS,
    )
    base_layers: int | None = setting(
        None,
        "model",
        "depth the hyperparameters were tuned at (default: --layers, i.e. no depth scaling)",
        metavar="L",
    )
    zero_query: bool = setting(
        False,
        "model",
        "start every attention query projection at zero (Tensor Programs V's zero-query init)",
        flag="store_true",
    )
    model: str = setting(
        "transformer",
        "model",
        "GraphTransformer, or the GINE + virtual node baseline (graph datasets)",
        choices=MODEL_KINDS,
    )
    match_parameters: bool = setting(
        False,
        "model",
        "with --model gine: widen the baseline (at --width and --base-width) to the parameter "
        "count of the GraphTransformer these settings build, for comparisons at equal size",
        flag="store_true",
    )
    local_branch: str = setting(
        "none",
        "model",
        "a message-passing branch beside attention in every block (GPS's local MPNN)",
        choices=("none", *LOCAL_BRANCH_KINDS),
    )
    virtual_node: bool = setting(
        False,
        "model",
        "OGB's virtual node in the GraphTransformer: a per-graph sum read between blocks, "
        "through which the model sees graph size (the GINE baseline always has one)",
        flag="store_true",
    )
    pe: tuple[str, ...] = setting(
        (),
        "model",
        "node encodings, comma-separated: rwse:K (random-walk), lap:K (Laplacian "
        "eigenvectors), degree; computed once per dataset (default: none)",
        metavar="SPECS",
        parse=_encoding_specs,
    )
    attention_dropout: float = setting(
        0.0, "model", "dropout on attention weights (message-passing and dense backends)"
    )
    # optimisation
    epochs: int = setting(60, "optimisation", "total epochs, also when resuming")
    batch_size: int = setting(
        64, "optimisation", "graphs (or seed nodes) per step, over all processes"
    )
    lr: float = setting(1e-3, "optimisation", "base learning rate")
    weight_decay: float = setting(0.0, "optimisation", "AdamW weight decay")
    warmup_steps: int = setting(100, "optimisation", "linear LR warm-up steps")
    lr_schedule: str = setting(
        "constant",
        "optimisation",
        "after warm-up: constant, or cosine decay to 0 over --epochs",
        choices=LR_SCHEDULES,
    )
    clip_grad: float = setting(1.0, "optimisation", "max gradient norm, 0 for none")
    # run
    seed: int = setting(0, "run", "seed of initialisation, data order and dropout")
    eval_batch_size: int = setting(256, "run", "graphs (or nodes) per evaluation batch and process")
    eval_every: int = setting(1, "run", "evaluate every K epochs and after the last", metavar="K")
    out: str | None = setting(
        None,
        "run",
        "output folder: metrics.jsonl, summary.json, checkpoints (default: runs/<dataset>)",
        metavar="DIR",
    )
    resume: bool = setting(
        False,
        "run",
        "continue the run in --out from its checkpoint, up to --epochs",
        flag="store_true",
    )
    overwrite: bool = setting(
        False, "run", "start over in an --out that holds a run", flag="store_true"
    )
    device: str = setting("auto", "run", "auto (this rank's GPU, else CPU), cpu, cuda, cuda:N")
    max_minutes: float | None = setting(
        None, "run", "stop cleanly (checkpoint saved) after M minutes", metavar="M"
    )
    progress: bool | None = setting(
        None, "run", "progress bar (default: when stderr is a terminal)", flag="switch"
    )

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.dataset

    def validate(self) -> None:
        """Raise :class:`ConfigError` for the first setting that cannot work."""
        positive = ("epochs", "batch_size", "eval_batch_size", "eval_every", "width", "layers")
        for name in (*positive, "heads", "base_width", "max_distance"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{flag_name(name)} must be a positive integer, got {value!r}")
        if self.width % self.heads:
            nearest = self.heads * max(1, self.width // self.heads)
            raise ConfigError(
                f"--width {self.width} is not divisible by --heads {self.heads}: each head gets "
                f"width/heads channels (e.g. --width {nearest})"
            )
        if self.mup and self.base_width % self.heads:
            raise ConfigError(
                f"--base-width {self.base_width} is not divisible by --heads {self.heads}"
            )
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(f"--attention must be one of {', '.join(ATTENTION_KINDS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}")
        if self.node_batching not in NODE_BATCHING:
            raise ConfigError(f"--node-batching must be one of {', '.join(NODE_BATCHING)}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(
                    f"--{flag_name(name)} must be in [0, 1), got {getattr(self, name)}"
                )
        try:
            parse_encodings(self.pe)
        except ValueError as error:
            raise ConfigError(f"--pe: {error}") from None
        for name in ("lr", "output_mult"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{flag_name(name)} must be positive")
        for name in ("weight_decay", "clip_grad", "warmup_steps", "num_workers", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{flag_name(name)} must not be negative")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError("--max-minutes must be positive")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError("--max-samples must be a positive integer")
        if not self.num_neighbors or any(n < -1 or n == 0 for n in self.num_neighbors):
            raise ConfigError("--num-neighbors takes positive counts per hop (-1: all)")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other")
        if self.match_parameters and self.model != "gine":
            raise ConfigError(
                f"--match-parameters sizes the --model gine baseline; got --model {self.model}"
            )
        if self.depth_parametrization not in DEPTH_PARAMETRIZATIONS:
            raise ConfigError(
                f"--depth-parametrization must be one of {', '.join(DEPTH_PARAMETRIZATIONS)}"
            )
        if self.depth_parametrization != "none" and self.model == "gine":
            raise ConfigError(
                "--depth-parametrization scales the GraphTransformer's residual branches; the "
                "--model gine baseline has none (use --depth-parametrization none)"
            )
        if dataset_level(self.dataset) == "node":
            defaults = TrainConfig()
            for name in GRAPH_LEVEL_SETTINGS:
                if getattr(self, name) != getattr(defaults, name):
                    raise ConfigError(
                        f"--{flag_name(name)} is for graph-level datasets: {self.dataset} trains "
                        "the NodeTransformer (local attention, no branches, encodings or virtual "
                        "node)"
                    )
        if self.base_layers is not None and (
            not isinstance(self.base_layers, int) or self.base_layers < 1
        ):
            raise ConfigError(f"--base-layers must be a positive integer, got {self.base_layers!r}")

    def __post_init__(self) -> None:
        # Sequences arrive as lists from JSON (a recipe, a stored run): one type, so that a
        # resumed run compares equal to the settings it was started with.
        for name in ("num_neighbors", "pe"):
            setattr(self, name, tuple(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["num_neighbors"] = list(self.num_neighbors)
        out["pe"] = list(self.pe)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def explicit_fields(self) -> set[str]:
        """Fields that differ from the defaults (what a Python caller set)."""
        default = TrainConfig()
        return {f.name for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}


def flag_name(name: str) -> str:
    """A setting's command-line flag without its dashes: ``base_width`` → ``base-width``."""
    return name.replace("_", "-")
