"""Benchmarks and metrics: HeteroMix, TAT-QA routing and CompMix-IR protocols."""
