# Two commands: `make demo` runs the main job on embedded defaults, `make test` passes the tests.
# Both create .venv when absent and install tomopipe into it (uv when it can be had, else pip).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= dev,globus,kafka,hpc,steering
STAMP  := $(VENV)/.installed-$(EXTRAS)

# Some environments set PYTHONDONTWRITEBYTECODE=1: every process (Prefect server, worker, each
# flow run) then compiles every imported module from source; on a busy 2-core machine that made
# `tomopipe up` take ~130 s (18–24 s on a fresh home with cached bytecode, idle). Let Python cache
# its bytecode, and precompile at install.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install test test-faults demo lint bench clean down browser slurm postgres test-facility redis \
	test-steering

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip --version > /dev/null 2>&1 || $(BIN)/python -m ensurepip > /dev/null
	@if $(BIN)/python -m pip install -q --upgrade uv; then \
	  $(BIN)/uv pip install --python $(BIN)/python -e '.[$(EXTRAS)]'; \
	else \
	  $(BIN)/python -m pip install -e '.[$(EXTRAS)]'; \
	fi
	@$(BIN)/python -m compileall -q -j 0 $(VENV)/lib flows tasks deployments infra tomopipe \
	  > /dev/null || true
	@touch $(STAMP)

# The import contracts (pyproject.toml [tool.importlinter]) are checked on a copy of the
# package laid out as the wheel installs it (tomopipe/flows, tomopipe/tasks, ...): import-linter
# reads a package from its folder, and the editable install maps the top-level folders into
# tomopipe without one.
LINT_TREE := $(VENV)/import-lint

lint: install
	$(BIN)/ruff check .
	@rm -rf $(LINT_TREE) && mkdir -p $(LINT_TREE)
	@cp -r tomopipe $(LINT_TREE)/tomopipe && rm -f $(LINT_TREE)/tomopipe/prefect.yaml
	@for d in flows tasks deployments infra; do cp -r $$d $(LINT_TREE)/tomopipe/$$d; done
	cd $(LINT_TREE) && PYTHONPATH=. $(CURDIR)/$(BIN)/lint-imports --no-logo --no-cache \
	  $(CURDIR)/pyproject.toml

# The UI tests open pages in Debian's headless chromium; install it where we are root (CI is).
browser:
	@command -v chromium > /dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  > /dev/null 2>&1; } || echo "chromium is not installed: the browser tests will skip"

# The SLURM tests start a real single-node SLURM (munged, slurmctld, slurmd); install Debian's
# slurm-wlm and munge where we are root (CI is), else those tests skip saying why.
slurm:
	@{ command -v slurmctld && command -v munged; } > /dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) \
	  > /dev/null 2>&1; } || echo "slurm-wlm/munge are not installed: the SLURM tests will skip"

# Prefect on PostgreSQL (tests/test_postgres.py) starts Debian's server in a temporary folder.
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl > /dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) \
	  > /dev/null 2>&1; } || echo "postgresql is not installed: the PostgreSQL tests will skip"

# The queue (tomopipe up --with-queue, tests/test_queue.py, tests/test_steering*.py) runs on
# Debian's redis-server; install it where we are root (CI is), else those tests skip saying why.
redis:
	@command -v redis-server > /dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) \
	  > /dev/null 2>&1; } || echo "redis-server is not installed: the queue tests will skip"

# The fault matrix (tests/faults marked slow: real kills, heartbeat timeouts, bursts of scans)
# takes about half an hour on 2 cores, past the suite's 15-minute budget: it runs on its own.
test: install lint browser slurm postgres redis
	$(BIN)/pytest -q -ra -m "not slow"

test-faults: install
	$(BIN)/pytest -q -ra -m slow

# Beyond one machine, the slow part: tomopipe up with Prefect on the test PostgreSQL.
test-facility: install slurm postgres
	$(BIN)/pytest -q -ra tests/test_slurm.py tests/test_slurm_resources.py tests/test_postgres.py \
	  tests/test_production_processes.py

# Steering end to end (slow; real Redis, RE Manager, Prefect, Tiled): align and zoom, a person
# approving, editing or refusing a suggested scan, and a golden scan stopped once good enough.
test-steering: install redis
	$(BIN)/pytest -q -ra tests/test_steering.py tests/test_steering_person.py \
	  tests/test_steering_stop.py

demo: install
	$(BIN)/python -m tomopipe.infra.demo

down: install
	$(BIN)/tomopipe down

bench: install
	$(BIN)/python benchmarks/bench_backends.py
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_mover.py
	$(BIN)/python benchmarks/bench_write.py
	$(BIN)/python benchmarks/bench_recon_command.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
