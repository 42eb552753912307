"""FAISS index: building, the on-disk directory format, loading and sharded search."""

from __future__ import annotations

from retriever.index.build import BuildConfig, BuildReport, build_index, build_index_from_units, load_units
from retriever.index.loaded import Index
from retriever.index.manifest import Manifest
from retriever.index.shards import SearchParams, ShardedIndex, exact_topk, merge_topk
from retriever.index.store import SOURCE_ORDER, UnitStore, UnitStoreWriter

__all__ = [
    "SOURCE_ORDER", "BuildConfig", "BuildReport", "Index", "Manifest", "SearchParams", "ShardedIndex",
    "UnitStore", "UnitStoreWriter", "build_index", "build_index_from_units", "exact_topk", "load_units", "merge_topk",
]
