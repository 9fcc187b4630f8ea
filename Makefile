# lora-vs-full: is a LoRA adapter as good as a full fine-tune for my embedding model, and at which rank?
# `make help` lists the targets. Overridable: TORCH_SPEC, PYTHON, ARGS, SWEEP_ARGS, DECIDE_ARGS, COMPARE_ARGS, BENCH_ARGS,
# MINI_DEV, HOST, PORT,
# SERVER_PORT, BACKEND_STORE_URI.

PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
TORCH_SPEC  ?= torch==2.13.0
OUTPUTS     ?= $(or $(PIPELINE_OUTPUTS),outputs)
ARGS        ?=
SWEEP_ARGS  ?=
DECIDE_ARGS ?=
COMPARE_ARGS ?=
BENCH_ARGS  ?=
HOST        ?= 127.0.0.1
PORT        ?= 5000
SERVER_PORT ?= 5001
BACKEND_STORE_URI ?= sqlite:///$(abspath $(OUTPUTS))/server/mlflow.db
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help install demo run sweep decide compare reproduce reproduce-mini bench test test-fast test-cluster lint ui server clean

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

install: ## create .venv, install torch first (TORCH_SPEC), then the project and its dev tools
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"

demo: ## offline: LoRA and full fine-tune of the packaged MiniLM on generated data, then the comparison
	$(BIN)/python -m pipeline.tools.demo_data
	$(BIN)/python -m pipeline -m experiment=demo $(ARGS)
	$(BIN)/python -m pipeline.report --experiment demo

run: ## one pipeline run: make run ARGS="finetune=full data.path=... train.max_steps=100"
	$(BIN)/python -m pipeline $(ARGS)

sweep: ## LoRA r x alpha grid plus the full arm: make sweep SWEEP_ARGS="finetune.r=4,8 finetune.alpha=8 ..."
	$(BIN)/python -m pipeline -m sweep=lora_grid $(SWEEP_ARGS)

decide: ## make sweep, then fresh seeds of both selected configurations in rounds until decided: make decide DECIDE_ARGS="... hydra.sweeper.decide.budget=10"
	$(BIN)/python -m pipeline -m sweep=lora_grid hydra.sweeper.decide.enabled=true $(DECIDE_ARGS)

compare: ## report of the latest sweep (table with CIs and p-values, plots), logged on its parent run
	$(BIN)/python -m pipeline.report $(COMPARE_ARGS)

# make reproduce(-mini) reads back the sweeps it just made, by the hydra.sweep.dir each step started in (its sweep.json:
# sweep id and tracking store), a new one per call: never the store's latest sweep
REPRODUCE_DIR := $(OUTPUTS)/multirun/reproduce-$(shell date +%Y-%m-%d_%H-%M-%S)
reproduce: ## the paper recipe as published (LoRA and full, lr 2e-5, seed 42, plain MNRL), then make decide on it (GPU + Hub)
	$(BIN)/python -m pipeline -m experiment=paper_lora_mnrl,paper_full_mnrl hydra.sweep.dir=$(REPRODUCE_DIR)-recipe $(ARGS)
	$(BIN)/python -m pipeline -m sweep=lora_grid experiment=paper_lora finetune.r=64 finetune.alpha=128 finetune.target_modules=[query,value] \
		hydra.sweeper.decide.enabled=true hydra.sweep.dir=$(REPRODUCE_DIR)-decide $(DECIDE_ARGS) $(ARGS)
	$(BIN)/python -m pipeline.report --sweep-dir $(REPRODUCE_DIR)-decide --published-sweep-dir $(REPRODUCE_DIR)-recipe \
		$(COMPARE_ARGS)

# the mini recipe's dev set unsaturated (base model's dev NDCG@10 <= 0.85; 0.908 without distractors): every training
# answer joins the dev corpus. Measure a value with: python -m pipeline experiment=mini_paper_lora run.until=dev_baseline
# data.dev_distractors=N (MLflow metric baseline_dev_ndcg_at_10)
MINI_DEV ?= data.dev_distractors=719
MINI_PROTOCOL ?= hydra.sweeper.lr.lora=[5e-4,2e-3] hydra.sweeper.lr.full=[3e-5,1e-4] hydra.sweeper.seeds=[12,13,14] hydra.sweeper.decide.budget=5
reproduce-mini: ## make decide on the paper recipe scaled to 2 CPU cores (needs ../shared/data), verdict in docs/mini_paper
	$(BIN)/python -m pipeline -m sweep=lora_grid experiment=mini_paper_lora finetune.r=8,64 finetune.alpha=2r \
		finetune.target_modules=[query,value] $(MINI_DEV) \
		$(MINI_PROTOCOL) hydra.sweeper.decide.enabled=true hydra.sweeper.decide.ranks=true \
		hydra.sweep.dir=$(REPRODUCE_DIR)-mini $(DECIDE_ARGS) $(ARGS)
	$(BIN)/python -m pipeline.report --sweep-dir $(REPRODUCE_DIR)-mini --out docs/mini_paper $(COMPARE_ARGS)

bench: ## benchmarks -> docs/benchmarks.md + docs/profile_cpu.md: training, evaluation, overhead, sweep reuse, speed, profile (~17 min, quiet 2 cores)
	$(BIN)/python -m bench $(BENCH_ARGS)

test: ## the whole test suite (the CI command), then its 25 slowest tests
	$(BIN)/python -m pytest -q --durations=25

test-fast: ## the tests that train nothing, start no process and take seconds (neither integration nor slow)
	$(BIN)/python -m pytest -q -m "not integration and not slow" --durations=25

test-cluster: ## tracking server, sweep through a live single-node SLURM cluster, requeue (needs slurm-wlm, munge)
	$(BIN)/python -m pytest -q tests/launch/test_cluster.py tests/launch/test_launch.py

lint: ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ui: ## MLflow UI on $(HOST):$(PORT) over $(OUTPUTS)/mlflow.db, with the URL of the LoRA-vs-full comparison
	PIPELINE_OUTPUTS="$(OUTPUTS)" $(BIN)/python -m pipeline.tracking.ui --host $(HOST) --port $(PORT)

server: ## MLflow tracking server on $(HOST):$(SERVER_PORT) for jobs on other machines: tracking.uri=http://HOST:PORT
	PIPELINE_OUTPUTS="$(OUTPUTS)" $(BIN)/python -m pipeline.launch.server --host $(HOST) --port $(SERVER_PORT) \
		--backend-store-uri "$(BACKEND_STORE_URI)"

clean: ## remove run outputs, stage caches and the MLflow DB under $(OUTPUTS)
	rm -rf $(OUTPUTS)
