"""medmeta: heterogeneous medical data to published few-shot models."""

__version__ = "0.1.0"
