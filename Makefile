# qkdseg: make install | make test | make reproduce | make mutate
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test reproduce mutate clean

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

# Mutation testing of the core modules (not part of `make test`; CPU heavy, about
# 20-40 min on 2 cores). mutmut is installed here only. Results: out-mutate/.
mutate: install
	$(PY) -m pip install --quiet 'mutmut>=3.8,<4'
	nice -n 10 $(PY) tests/mutate.py --out out-mutate

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
