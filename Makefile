PYTHON ?= python3
LISTEN ?= 0.0.0.0:5000
DATA ?= ./data

.PHONY: install run test reliability lint format bench clean

install:
	$(PYTHON) -m pip install -q -e '.[test]'

run: install
	aioreg serve --listen $(LISTEN) --data $(DATA)

test:
	$(PYTHON) -m pip install -q -e '.[test]'
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

# Full-length reliability suites (CI runs short versions inside `make test`).
reliability:
	AIOREG_CRASH_ROUNDS=50 AIOREG_SOAK_SECONDS=300 AIOREG_PROPERTY_EXAMPLES=2000 \
		$(PYTHON) -m pytest -q -s -p no:cacheprovider tests/test_crash.py tests/test_soak.py tests/test_bad_input.py

lint:
	ruff check aioreg tests benchmarks
	ruff format --check aioreg tests benchmarks

format:
	ruff format aioreg tests benchmarks
	ruff check --fix aioreg tests benchmarks

bench: install
	$(PYTHON) -m pip install -q -r benchmarks/requirements.txt
	$(PYTHON) -m benchmarks

clean:
	rm -rf build *.egg-info .pytest_cache
