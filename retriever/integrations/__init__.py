"""Adapters that put a running retriever server behind other frameworks' interfaces (optional extras)."""
