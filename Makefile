# Front door: `make demo` runs the demo on the local cluster, `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

UI_DIST := operator/compozy_operator/api_service/ui_dist/index.html

.PHONY: demo test ui browser screenshots bench-ui chart cluster bench bench-collection bench-pool bench-agents bench-hostile bench-testenv bench-nats-auth bench-failover chaos binaries lock clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

binaries:
	hack/testenv/build.sh

demo: $(STAMP) binaries
	$(VENV)/bin/compozy dev demo

# the chart's CRDs (copies of crds/), its NATS callout config, its values table (docs/helm-values.md), then helm lint
chart: $(STAMP) binaries
	cp crds/*.yaml charts/compozy-operator/crds/
	$(PY) -m compozy_operator.nats_auth.keys --server-conf > charts/compozy-operator/files/nats-callout.conf
	$(PY) hack/helm-docs.py
	"$$(hack/testenv/build.sh | tail -1)/helm" lint --strict charts/compozy-operator

cluster: $(STAMP) binaries
	$(VENV)/bin/compozy dev up

# the web UI (ui/, docs/ui.md): npm ci from the lock, its unit tests, then the build that api.Service serves
ui: $(UI_DIST)

$(UI_DIST): ui/package.json ui/package-lock.json ui/index.html ui/vite.config.ts ui/tsconfig.json $(wildcard ui/src/*)
	cd ui && npm ci --no-audit --no-fund && npm test && npm run build

# Debian's chromium and chromedriver for the browser tests (tests/ui/)
browser:
	hack/ui/browser.sh

test: $(STAMP) binaries ui browser
	$(PY) -m pytest

# the README's and docs/ui.md's pictures of the main pages, taken on the local cluster
screenshots: $(STAMP) binaries ui browser
	$(PY) hack/ui/screenshots.py

bench-ui: $(STAMP) binaries ui browser
	$(PY) hack/bench/ui.py

# the workflow figures, then issue 15's: bare pods, JetStream, a pod per attempt and pooled, side by side
bench: $(STAMP) binaries
	$(PY) hack/bench/workflows.py
	$(PY) hack/bench/pool.py

bench-collection: $(STAMP) binaries
	$(PY) hack/bench/collection.py

bench-pool: $(STAMP) binaries
	$(PY) hack/bench/pool_runner.py
	$(PY) hack/bench/pool.py

bench-agents: $(STAMP) binaries
	$(PY) hack/bench/agents.py

bench-hostile: $(STAMP) binaries
	$(PY) hack/bench/hostile.py

bench-testenv: $(STAMP) binaries
	$(PY) hack/bench/testenv.py

bench-nats-auth: $(STAMP) binaries
	$(PY) hack/bench/nats_auth.py

bench-failover: $(STAMP) binaries
	$(PY) hack/bench/failover.py

# faults injected under a mixed load; prints lost/duplicated/stuck/wrong/pods left and recovery times
chaos: $(STAMP) binaries
	$(PY) hack/chaos.py

lock:
	$(PY) -m pip freeze --exclude-editable | sed '1i # Exact versions tested (pip freeze of .venv); refresh with: make lock' > requirements.lock

clean:
	rm -rf $(VENV) build *.egg-info
