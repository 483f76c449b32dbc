"""FlexAttention graph transformers for PyTorch Geometric, with μP hyperparameter transfer."""

from pyg_mup.graph import GraphStructure
from pyg_mup.nn import FlexGraphConv, MuPFlexAttention

__version__ = "0.1.0"

__all__ = ["FlexGraphConv", "GraphStructure", "MuPFlexAttention", "__version__"]
