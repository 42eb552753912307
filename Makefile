# Two entry points (README): `make serve` runs the main job (the gRPC server on the embedded
# default), `make test` runs the whole suite. `make demo` searches the sample index from the CLI.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A bare `torch` requirement pulls a multi-GB CUDA build. Without a GPU we install this CPU
# build first (it satisfies the project's torch>=2.4). Override on other machines, e.g.
#   make demo TORCH_SPEC="torch==2.13.0 --index-url <your CPU wheel index>"
TORCH_SPEC ?= torch==2.13.0
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
# One FAISS wheel: faiss-gpu (with its CUDA libraries) where a GPU is present, else faiss-cpu
# (SIMD builds, no CUDA libraries). Override with FAISS=gpu or FAISS=cpu.
FAISS ?= $(if $(HAS_GPU),gpu,cpu)
FAISS_OTHER := $(if $(filter gpu,$(FAISS)),cpu,gpu)

.PHONY: install install-dev demo serve test test-all test-faiss-other lint clean recipe-cpu

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
ifneq ($(HAS_GPU),yes)
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
endif
	$(BIN)/python -m pip install -q -e '.[$(FAISS)]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[$(FAISS),dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

serve: install
	$(BIN)/retriever serve

demo: install
	$(BIN)/retriever demo

test: install-dev
	$(BIN)/python -m pytest

test-all: install-dev
	$(BIN)/python -m pytest -m "not gpu"

lint: install-dev
	$(BIN)/ruff check retriever tests benchmarks
	$(BIN)/mypy retriever

# Reproduce the trained model's figures (README "Training"): the CPU recipe (93 min measured on the
# 2-core machine), a HeteroMix mini index built with its model (~12 min) and the benchmark against
# BM25 and the hybrid (~2 min). Results go to $(RECIPE_RESULTS)/results.md; RESULTS.md is left alone.
DATA ?= ../shared/data/heteromix
RECIPE_RUN ?= runs/train_cpu
RECIPE_INDEX ?= index_builds/mini-train_cpu
RECIPE_RESULTS ?= benchmarks/results/heteromix-mini-train_cpu
recipe-cpu: install
	$(BIN)/retriever train --config configs/train_cpu.toml --output-dir $(RECIPE_RUN) --overwrite
	$(BIN)/retriever build-index $(DATA)/corpus.jsonl.gz --ids $(DATA)/mini.ids.txt \
		--model $(RECIPE_RUN)/model --out $(RECIPE_INDEX) --overwrite
	$(BIN)/retriever bench heteromix --corpus $(DATA)/corpus.jsonl.gz --ids $(DATA)/mini.ids.txt \
		--questions $(DATA)/queries.dev.mini.jsonl --index $(RECIPE_INDEX) \
		--scenarios all-plain,all,source-soft,source-hard --out $(RECIPE_RESULTS) --no-results-md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The index code must work with either FAISS wheel: run the FAISS-level tests in a small venv
# with the wheel the main venv does not have (faiss-gpu on a machine without a GPU: its CPU path).
FAISS_OTHER_VENV ?= .venv-faiss-$(FAISS_OTHER)
test-faiss-other:
	test -x $(FAISS_OTHER_VENV)/bin/python || $(PYTHON) -m venv $(FAISS_OTHER_VENV)
	$(FAISS_OTHER_VENV)/bin/python -m pip install -q faiss-$(FAISS_OTHER) numpy orjson pyarrow tqdm pytest
	$(FAISS_OTHER_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/index/test_shards.py
