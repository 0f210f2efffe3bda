PYTHON ?= python3
VENV ?= .venv
LISTEN ?= 0.0.0.0:5000
DATA ?= ./data
APT_GET ?= apt-get

# Everything runs from a virtualenv of our own, so Debian/Ubuntu's externally
# managed system Python (PEP 668) is never touched. `run` installs only what
# the server needs; `test` adds the test tools to the same environment.
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
TESTING := $(VENV)/.test-installed
PACKAGING := setup.cfg pyproject.toml

.PHONY: venv install run test reliability lint format bench clean

venv: $(BIN)/pip

$(BIN)/pip:
	@$(PYTHON) -m venv $(VENV) || { \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v $(APT_GET) >/dev/null; then \
	    echo "$(PYTHON) -m venv failed: installing python3-venv"; \
	    DEBIAN_FRONTEND=noninteractive $(APT_GET) update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq python3-venv >/dev/null && \
	    $(PYTHON) -m venv $(VENV); \
	  else \
	    echo "$(PYTHON) -m venv failed. Install the venv module, then run make again:" >&2; \
	    echo "    sudo apt-get install python3-venv    (Debian/Ubuntu)" >&2; \
	    exit 1; \
	  fi; }

$(RUNTIME): $(BIN)/pip $(PACKAGING)
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(TESTING): $(RUNTIME)
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

install: $(RUNTIME)

run: $(RUNTIME)
	$(BIN)/aioreg serve --listen $(LISTEN) --data $(DATA)

test: $(TESTING)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# Full-length reliability suites (CI runs short versions inside `make test`).
reliability: $(TESTING)
	AIOREG_CRASH_ROUNDS=50 AIOREG_SOAK_SECONDS=300 AIOREG_PROPERTY_EXAMPLES=2000 \
		$(BIN)/python -m pytest -q -s -p no:cacheprovider tests/test_crash.py tests/test_soak.py tests/test_bad_input.py

lint: $(TESTING)
	$(BIN)/ruff check aioreg tests benchmarks
	$(BIN)/ruff format --check aioreg tests benchmarks
	$(BIN)/mypy --strict aioreg

format: $(TESTING)
	$(BIN)/ruff format aioreg tests benchmarks
	$(BIN)/ruff check --fix aioreg tests benchmarks

bench: $(RUNTIME)
	$(BIN)/python -m pip install -q -r benchmarks/requirements.txt
	$(BIN)/python -m benchmarks

clean:
	rm -rf build *.egg-info .pytest_cache $(VENV)
