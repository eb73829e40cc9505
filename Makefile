# Two entry points that work on a fresh machine (see README):
#   make bert-edge   install everything into .venv and build recipes/bert-edge.yaml
#   make test        install everything into .venv and run the whole test suite
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: install litert-env bert-edge test lint typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[models,ray,dev,edge,report]'
	# bytecode up front: a no-op build should not spend its time compiling (PYTHONDONTWRITEBYTECODE)
	$(BIN)/python -m compileall -q orchestrator plugins > /dev/null
	touch $(STAMP)

install: $(STAMP)

# The LiteRT steps' own environment (orchestrator/edge/litert_env.py): litert-torch and
# ai-edge-quantizer pin a pydantic the project does not take, so they live in .venv-litert, which
# layers on .venv (a .pth appends .venv's site-packages: torch and transformers are shared).
LITERT := .venv-litert
LITERT_STAMP := $(LITERT)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

$(LITERT_STAMP): $(STAMP)
	test -x $(LITERT)/bin/python || $(BIN)/python -m venv $(LITERT)
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > "$$($(LITERT)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz-project-venv.pth"
	$(LITERT)/bin/python -m pip install -q 'litert-torch>=0.10' 'ai-edge-quantizer>=0.10' 'ai-edge-litert>=2.3'
	touch $(LITERT_STAMP)

litert-env: $(LITERT_STAMP)

bert-edge: $(STAMP) $(LITERT_STAMP)
	$(BIN)/deploy-build recipes/bert-edge.yaml

lint: $(STAMP)
	$(BIN)/ruff check orchestrator tests plugins benchmarks examples
	$(BIN)/mypy

test: $(STAMP) $(LITERT_STAMP) lint
	$(BIN)/python -m pytest -q -m "not gpu"

bench: $(STAMP)
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/compare_rev.py
	$(BIN)/python benchmarks/models.py
	$(BIN)/python benchmarks/speedup_noise.py --wait-quiet 300

clean:
	rm -rf build cache
