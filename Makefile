# ipso-analysis: two commands do everything on a fresh machine.
#   make demo   create .venv, install, simulate the synthetic collaborative, render every report
#   make test   create .venv, install, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA := data/synthetic
DEMO_OUT := reports/demo
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: demo test bench lint clean venv

venv: $(STAMP)

# (Re)install when .venv is missing or older than pyproject.toml.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name python3 --display-name "Python 3 (ipso)" >/dev/null
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ipso simulate --out $(DEMO_DATA)
	$(BIN)/python -m analysis.demo --data $(DEMO_DATA) --out $(DEMO_OUT) --jobs $(JOBS)

test: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m pytest -q -n 2 --dist loadgroup

bench: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check analysis tests benchmarks

clean:
	rm -rf $(DEMO_DATA) $(DEMO_OUT) .pytest_cache
