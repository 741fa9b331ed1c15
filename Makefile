# qkdseg: make install | make test | make reproduce
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test reproduce clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: install
	$(PY) -m pytest

reproduce: install
	$(VENV)/bin/qkdseg reproduce --trials 1000 --seed 0 --out out

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
