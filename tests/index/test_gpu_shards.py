"""FAISS shards on the GPU against the CPU path on seeded data (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from retriever.index.shards import gpu_count
from tests.index.test_shards import build, data  # noqa: F401  (data is the fixture)

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
@pytest.mark.parametrize("sources", [None, ["table"], ["text", "kb"]], ids=lambda f: "+".join(f) if f else "all")
def test_gpu_shards_return_the_cpu_results(data, factory: str, sources) -> None:  # noqa: F811
    assert gpu_count() > 0, "faiss sees no GPU although torch does: is this the faiss-gpu wheel?"
    vectors, _, queries = data
    on_gpu = build(vectors, factory, use_gpu=True)
    assert all(s.index is not s.cpu_index for s in on_gpu.shards.values()), "a shard stayed on the CPU"
    on_cpu = build(vectors, factory, use_gpu=False)
    gpu_scores, gpu_ids = on_gpu.search(queries, 10, sources)
    cpu_scores, cpu_ids = on_cpu.search(queries, 10, sources)
    np.testing.assert_allclose(gpu_scores, cpu_scores, atol=1e-4)
    # Ids may swap only between (near-)tied scores.
    differ = gpu_ids != cpu_ids
    assert np.all(np.abs(gpu_scores[differ] - cpu_scores[differ]) < 1e-4)
