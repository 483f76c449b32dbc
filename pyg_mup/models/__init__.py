"""Models built from :class:`~pyg_mup.nn.FlexGraphConv` blocks, μP-ready (``MuReadout`` heads).

- :class:`GraphTransformer`: one prediction per graph (``ogbg-*``).
- :class:`NodeTransformer`: one prediction per node (``ogbn-*``).
"""

from .block import ATTENTION_KINDS, TransformerBlock
from .encoders import FeatureEncoder, feature_specs
from .graph_transformer import GraphTransformer
from .node_transformer import NodeTransformer

__all__ = [
    "ATTENTION_KINDS",
    "FeatureEncoder",
    "GraphTransformer",
    "NodeTransformer",
    "TransformerBlock",
    "feature_specs",
]
