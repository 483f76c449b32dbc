"""FlexAttention graph transformers for PyTorch Geometric, with μP hyperparameter transfer."""

from pyg_mup.nn import FlexGraphConv, MuPFlexAttention
from pyg_mup.structure import GraphStructure

__version__ = "0.1.0"

__all__ = ["FlexGraphConv", "GraphStructure", "MuPFlexAttention", "__version__"]
