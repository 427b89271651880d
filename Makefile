# `make run` and `make test` each create or refresh the virtualenv, then do their job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/raytenant run

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/fanout.py

clean:
	rm -rf $(VENV) data .coverage .pytest_cache
