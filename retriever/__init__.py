"""retriever: heterogeneous knowledge retrieval (text, tables, KB triples, infoboxes) in one embedding space."""

from __future__ import annotations

__version__ = "0.1.0"
