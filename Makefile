# Two commands: `make demo` runs the main job on embedded defaults, `make test` passes the tests.
# Both create .venv when absent and install tomopipe into it (uv when it can be had, else pip).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= dev,globus,kafka
STAMP  := $(VENV)/.installed-$(EXTRAS)

.PHONY: install test demo lint bench clean down

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python -e '.[$(EXTRAS)]'
	@touch $(STAMP)

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/pytest -q -ra

demo: install
	$(BIN)/python -m infra.demo

down: install
	$(BIN)/tomopipe down

bench: install
	$(BIN)/python benchmarks/bench_backends.py
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_mover.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
