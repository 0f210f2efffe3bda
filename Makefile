PYTHON ?= python3
LISTEN ?= 0.0.0.0:5000
DATA ?= ./data

.PHONY: install run test lint format bench clean

install:
	$(PYTHON) -m pip install -q -e '.[test]'

run: install
	aioreg serve --listen $(LISTEN) --data $(DATA)

test:
	$(PYTHON) -m pip install -q -e '.[test]'
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

lint:
	ruff check aioreg tests
	ruff format --check aioreg tests

format:
	ruff format aioreg tests
	ruff check --fix aioreg tests

bench: install
	$(PYTHON) -m benchmarks

clean:
	rm -rf build *.egg-info .pytest_cache
