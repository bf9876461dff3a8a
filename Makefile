# Every target creates or reuses .venv and installs what it needs (torch==2.13.0 comes from the
# local CPU wheel; see pyproject.toml).
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
CONFIG ?= configs/toy.yaml
RAY_DASHBOARD := http://127.0.0.1:8265
export OMP_NUM_THREADS ?= 1
export RAY_USAGE_STATS_ENABLED := 0
# Ray 2.5x+ protects a head with a token (~/.ray/auth_token); the CLI must be told to send it.
export RAY_AUTH_MODE ?= token

.PHONY: venv demo test bench pretrain grpo cluster-up cluster-down submit-grpo serve-rewards clean

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

## demo: pretrain the toy base model (cached), then 30 GRPO steps on a local Ray cluster
demo: $(STAMP)
	$(PY) -m cluster.jobs.pretrain --config $(CONFIG)
	$(PY) -m cluster.jobs.grpo --config $(CONFIG)

## test: the whole suite on CPU (real Ray, real Serve, real HTTP)
test: $(STAMP)
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
	$(PY) -m bench.http_load

## serve-rewards: the reward HTTP endpoint on 127.0.0.1:8000 (POST /v1/score, GET /v1/critics, /healthz, /metrics, /docs)
REWARD_SERVER_CONFIG ?= configs/reward_server.yaml
serve-rewards: $(STAMP)
	$(PY) -m reward_services.serve --config $(REWARD_SERVER_CONFIG)

## cluster-up / cluster-down: a local Ray head on loopback only, with 2 stand-in accelerators
cluster-up: $(STAMP)
	$(VENV)/bin/ray start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 \
		--resources='{"accelerator": 2}' --disable-usage-stats \
		--dashboard-agent-listen-port=52390  # not the default 52365 that any other local Ray instance takes
cluster-down:
	-$(VENV)/bin/ray stop

## submit-grpo: the same GRPO job through `ray job submit` to the head from cluster-up
submit-grpo: $(STAMP)
	$(VENV)/bin/ray job submit --address $(RAY_DASHBOARD) \
		--runtime-env-json '{"env_vars": {"OMP_NUM_THREADS": "1"}}' -- \
		$(abspath $(PY)) -m cluster.jobs.grpo --config $(abspath $(CONFIG)) \
		--set run_dir=$(abspath runs/toy-job) --set policy.model_path=$(abspath runs/base/tiny)

clean:
	rm -rf runs .pytest_cache
