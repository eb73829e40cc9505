# Two entry points that work on a fresh machine (see README):
#   make bert-edge   install everything into .venv and build recipes/bert-edge.yaml
#   make test        install everything into .venv and run the whole test suite
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: install bert-edge test lint typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[models,ray,dev]'
	# bytecode up front: a no-op build should not spend its time compiling (PYTHONDONTWRITEBYTECODE)
	$(BIN)/python -m compileall -q orchestrator plugins > /dev/null
	touch $(STAMP)

install: $(STAMP)

bert-edge: $(STAMP)
	$(BIN)/deploy-build recipes/bert-edge.yaml

lint: $(STAMP)
	$(BIN)/ruff check orchestrator tests plugins benchmarks examples
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -m "not gpu"

bench: $(STAMP)
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/compare_rev.py
	$(BIN)/python benchmarks/models.py
	$(BIN)/python benchmarks/speedup_noise.py --wait-quiet 300

clean:
	rm -rf build cache
