# Every target creates or reuses .venv and installs what it needs (torch==2.13.0 comes from the
# local CPU wheel; see pyproject.toml).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
CONFIG ?= configs/toy.yaml
# the demo: the toy world with Stage II's extensions on (configs/pipeline.yaml extends toy.yaml)
DEMO_CONFIG ?= configs/pipeline.yaml
HEAD_DIR := runs/head
export OMP_NUM_THREADS ?= 1
export RAY_USAGE_STATS_ENABLED := 0
# Ray 2.5x+ protects a head with a token (~/.ray/auth_token); the CLI must be told to send it.
export RAY_AUTH_MODE ?= token
# Debian packages some tests drive for real: Chromium (the HTML report), Prometheus (dashboards).
SYSTEM_PACKAGES := chromium prometheus

.PHONY: venv system-packages demo test bench pretrain grpo cluster-up cluster-down submit-grpo serve-rewards dashboards clean

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing (Debian)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
		|| echo "could not install$$missing: the tests that need them will say so and skip"; fi

## demo: the whole pipeline on the toy world — pretrain (shipped, cached) → SFT → GRPO → DPO → eval → HTML report
demo: $(STAMP)
	$(PY) -m cluster.jobs.pipeline --config $(DEMO_CONFIG) --out runs/pipeline

## test: the whole suite on CPU (real Ray, real Serve, real HTTP, real Prometheus and Chromium)
test: $(STAMP) system-packages
	$(PY) -m pytest -q

pretrain: $(STAMP)
	$(PY) -m cluster.jobs.pretrain --config $(CONFIG)

grpo: $(STAMP)
	$(PY) -m cluster.jobs.grpo --config $(CONFIG)

## bench: side-by-side measurements printed as ratios (see README's benchmark table)
bench: $(STAMP)
	$(PY) -m bench.grpo_step --config $(CONFIG)
	$(PY) -m bench.pool --config $(CONFIG)
	$(PY) -m bench.reward_makespan
	$(PY) -m bench.dpo_memory
	$(PY) -m bench.http_load

## serve-rewards: the reward HTTP endpoint on 127.0.0.1:8000 (POST /v1/score, GET /v1/critics, /healthz, /metrics, /docs)
REWARD_SERVER_CONFIG ?= configs/reward_server.yaml
serve-rewards: $(STAMP)
	$(PY) -m reward_services.serve --config $(REWARD_SERVER_CONFIG)

## cluster-up / cluster-down: a private Ray head on loopback (its own ports and temp dir), stopped exactly
cluster-up: $(STAMP)
	$(PY) -m cluster.local_head up --dir $(HEAD_DIR)
cluster-down:
	$(PY) -m cluster.local_head down --dir $(HEAD_DIR)

## submit-grpo: the same GRPO job through `ray job submit` to the head from cluster-up
submit-grpo: $(STAMP)
	$(VENV)/bin/ray job submit --address $$($(PY) -c "import json; print(json.load(open('$(HEAD_DIR)/head.json'))['address'])") \
		--runtime-env-json '{"env_vars": {"OMP_NUM_THREADS": "1"}}' -- \
		bash -c "cd $(CURDIR) && exec $(abspath $(PY)) -m cluster.jobs.grpo --config $(abspath $(CONFIG)) --set run_dir=$(abspath runs/toy-job)"

## dashboards: Prometheus on 127.0.0.1:9095 scraping the cluster-up head and the reward endpoint; Ctrl-C stops it (only it)
dashboards: $(STAMP) system-packages
	$(PY) -m deploy.local.dashboards --head $(HEAD_DIR)/head.json --port 9095

clean:
	rm -rf runs .pytest_cache
