# qkdseg: make install | make test | make check-field | make chaos | make reproduce | make supply-study | make threshold-study | make dashboard | make mutate | make screenshot
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install browser etcd chaos test check-field check-careless reproduce supply-study threshold-study dashboard mutate screenshot clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Debian's chromium for the dashboard's browser tests (tests/test_dashboard_browser.py): Playwright drives it
# through its path and never downloads a browser. QKDSEG_CHROMIUM names another Chromium executable.
browser:
	@if [ -n "$$QKDSEG_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || [ "$$QKDSEG_SKIP_BROWSER" = 1 ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "make: installing Debian's chromium (apt) for the dashboard's browser tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends --no-upgrade chromium >/dev/null; \
	else \
	  echo "make: no chromium and no apt-get: install Chromium and set QKDSEG_CHROMIUM=/path/to/it" \
	       "(or QKDSEG_SKIP_BROWSER=1 to skip the browser tests)"; exit 1; \
	fi

# Debian's etcd server for the replicated controller's tests (tests/test_net_replica.py) and `net up --etcd N`:
# the tests and net up run their own members on their own loopback ports; the package's own service stays
# stopped and disabled. QKDSEG_SKIP_ETCD=1 skips it (those tests then skip, saying why).
etcd:
	@if command -v etcd >/dev/null 2>&1 || [ "$$QKDSEG_SKIP_ETCD" = 1 ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "make: installing Debian's etcd-server (apt) for the replicated controller's tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends --no-upgrade etcd-server >/dev/null; \
	  if command -v systemctl >/dev/null 2>&1; then $$SUDO systemctl disable --now etcd >/dev/null 2>&1 || true; fi; \
	else \
	  echo "make: no etcd and no apt-get: install etcd 3.4 or later (or QKDSEG_SKIP_ETCD=1 to skip its tests)"; exit 1; \
	fi

# Two workers, one test file each at a time (module-scoped servers and networks stay in one process); most
# of the suite waits on server processes, so two workers shorten it on 2 cores (README, "Tests"). `pytest` alone
# runs it serially.
test: install browser etcd
	$(PY) -m pytest -n 2 --dist loadfile --ignore-glob='*_field_check*.py'

# The independent field checks (tests/test_*field_check*.py: each written from the docs alone by someone who had not
# read the code, against real processes): not part of `make test`, to keep it within 15 minutes on 2 cores.
check-field: install browser etcd
	$(PY) -m pytest -n 2 --dist loadfile -p no:cacheprovider $(wildcard tests/test_*field_check*.py)

# The independent check of issue 26 (careless inputs and Ctrl-C on every batch command, written from the
# docs alone): about 3 minutes on 2 cores, so not part of `make test`. checks/ is not in pytest's testpaths.
check-careless: install
	$(PY) -m pytest -p no:cacheprovider checks/test_careless_independent.py

# Two minutes of faults on the example network with 3 controllers over 3 etcd members and a fault proxy per link
# (docs/network.md, "Chaos"): prints the report, keeps it in $(CHAOS_DIR)/chaos.json; exit 1 on a mismatched key,
# a link bit used twice or an unfetchable key. Not part of `make test` (about 2.5 minutes).
# CHAOS_STOCK=1: every SAE pair keeps a key stock (net init --stock, default watermarks 16:64); the report adds
# served_from_stock and stock_outs.
CHAOS_DIR   ?= out-chaos
CHAOS_SEED  ?= 0
CHAOS_PORT  ?= 18643
CHAOS_STOCK ?= 0
CHAOS_STOCKS := $(if $(filter 1,$(CHAOS_STOCK)),--stock A:B --stock A:C --stock B:A --stock B:C --stock C:A --stock C:B)
chaos: install etcd
	rm -rf $(CHAOS_DIR)
	$(VENV)/bin/qkdseg net init $(CHAOS_DIR) --network example --sae A=0 --sae B=7 --sae C=4 --security-level 0.5 \
	  --port $(CHAOS_PORT) $(CHAOS_STOCKS) >/dev/null
	@export QKDSEG_RELAY_TIMEOUT_S=6; \
	$(VENV)/bin/qkdseg net up $(CHAOS_DIR) --detach --controllers 3 --etcd 3 --faults >/dev/null || exit 1; \
	$(VENV)/bin/qkdseg net chaos $(CHAOS_DIR) --duration 120 --seed $(CHAOS_SEED) --format json > $(CHAOS_DIR)/chaos.json; \
	rc=$$?; $(VENV)/bin/qkdseg net down $(CHAOS_DIR) >/dev/null; \
	$(PY) -c "import json, sys; from qkdseg.net.chaos import format_report; print(format_report(json.load(open(sys.argv[1]))))" \
	  $(CHAOS_DIR)/chaos.json; exit $$rc

# Rewrites docs/img/dashboard.png from the browser test of `qkdseg kms demo`.
screenshot: install browser
	QKDSEG_UPDATE_SCREENSHOT=1 $(PY) -m pytest tests/test_dashboard_browser.py -q -k readme_screenshot

reproduce: install
	$(VENV)/bin/qkdseg reproduce --trials 1000 --seed 0 --out out

# Key supply policies (issue 35; README "Key supply"): on demand, fixed watermarks, adaptive, on the example
# network and a 100-node Waxman network, Poisson and PPBP arrivals, three loads, 5 replications paired by seed;
# and the Waxman network's PPBP runs again with slow relays (50 ms a hop).
# Results in out-supply/<network>-<arrivals>/ (report.md, supply_summary.csv, supply_tradeoff.png, supply_wait.png).
SUPPLY_ARGS ?= --rates 4,8,16 --replications 5 --duration 300 --algorithms smr-level --supply-pairs 8 --key-ttl 60 \
  --seed 0 --supply on-demand,fixed:1:4,fixed:2:8,fixed:4:16,fixed:8:32,fixed:16:64,adaptive
supply-study: install
	mkdir -p out-supply
	$(VENV)/bin/qkdseg topology generate waxman --nodes 100 --trusted 10 --p 0.8 --seed 7 -o out-supply/waxman.json
	for arr in poisson ppbp; do \
	  $(VENV)/bin/qkdseg simulate example $(SUPPLY_ARGS) --arrivals $$arr -q -o out-supply/example-$$arr || exit 1; \
	  $(VENV)/bin/qkdseg simulate out-supply/waxman.json $(SUPPLY_ARGS) --arrivals $$arr -q -o out-supply/waxman-$$arr \
	    || exit 1; \
	done
	$(VENV)/bin/qkdseg simulate out-supply/waxman.json $(SUPPLY_ARGS) --arrivals ppbp --hop-latency 50 -q \
	  -o out-supply/waxman-ppbp-hop50

# XOR against threshold sharing (issue 40; docs/algorithms.md, "Threshold sharing: the study"): the paper's Waxman
# setting and two Topology Zoo networks, security and link bits per key bit over p and the trusted relays, keys served
# under relay failures of 0, 1% and 5% paired by seed. The default is the quick grid (9 min 59 s wall on the 2 shared cores
# at load average 13-17: 220 CPU-seconds, about 2 minutes on 2 idle cores);
# the full size: make threshold-study THRESHOLD_ARGS="--full --requests 200 --replications 20".
# Results in out-threshold/ (report.md, threshold_*.png, static.parquet, dynamic.parquet).
THRESHOLD_ARGS ?= --requests 40 --replications 5
threshold-study: install
	$(VENV)/bin/qkdseg study --threshold $(THRESHOLD_ARGS) --seed 0 -q -o out-threshold

# The key service on the example network with live traffic; its dashboard on http://127.0.0.1:8080/dashboard/
# (make dashboard KMS_PORT=9443 DASHBOARD_PORT=9080 for other ports; 0 picks free ones, printed at the start)
KMS_PORT       ?= 8443
DASHBOARD_PORT ?= 8080
dashboard: install
	$(VENV)/bin/qkdseg kms demo --port $(KMS_PORT) --dashboard-port $(DASHBOARD_PORT)

# Mutation testing of the core modules (not part of `make test`; CPU heavy, about
# 20-40 min on 2 cores). mutmut is installed here only. Results: out-mutate/.
mutate: install
	$(PY) -m pip install --quiet 'mutmut>=3.8,<4'
	nice -n 10 $(PY) tests/mutate.py --out out-mutate

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
