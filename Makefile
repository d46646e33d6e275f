# ipso-analysis: two commands do everything on a fresh machine.
#   make demo   create .venv, install, simulate the synthetic collaborative, render every report
#               (prints reports/demo/publish/index.html: what may leave the analysis server)
#   make test   create .venv, install, run the test suite
#   make lock   refresh requirements.lock (and environment.yml's pins) after editing pyproject.toml
# .venv is installed from requirements.lock (every dependency pinned, with hashes), then the
# project itself without dependencies: the same library versions on every machine, months later.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
DEMO_DATA := data/synthetic
DEMO_OUT := reports/demo
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: demo test bench lint clean venv lock

venv: $(STAMP)

# (Re)install when .venv is missing or older than pyproject.toml or the lock.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name python3 --display-name "Python 3 (ipso)" >/dev/null
	@touch $(STAMP)

# Re-resolve the lock with uv (in a throw-away venv) and rewrite environment.yml's pins; then
# `make` reinstalls .venv. UPGRADE=1: newest allowed versions of everything.
lock:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) tools/lock.py $(if $(UPGRADE),--upgrade,)

demo: $(STAMP)
	$(BIN)/ipso simulate --out $(DEMO_DATA)
	$(BIN)/python -m analysis.demo --data $(DEMO_DATA) --out $(DEMO_OUT) --jobs $(JOBS)

test: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m pytest -q -n 2 --dist loadgroup

bench: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check analysis tests benchmarks tools

clean:
	rm -rf $(DEMO_DATA) $(DEMO_OUT) .pytest_cache
