# The two commands of a fresh machine: `make demo` and `make test`. Both set up what they need
# (Debian packages, the virtual environment in the cache dir, the Kafka jars) and are safe to re-run.
VENV := .venv
BIN := $(VENV)/bin
export INTENTSTREAM_WITH_COMPOSE ?= 0

.PHONY: setup up down demo test test-unit lint bench bench-beauty compose-check clean

setup:
	bash infra/bootstrap.sh

up: setup
	$(BIN)/intentstream up

down:
	$(BIN)/intentstream down

demo: setup
	$(BIN)/intentstream demo

# The layers (pyproject.toml [tool.importlinter]) are checked before the suite runs.
lint: setup
	$(BIN)/lint-imports

test: lint
	$(BIN)/intentstream up
	$(BIN)/python -m pytest

test-unit: setup
	$(BIN)/python -m pytest -m "not integration"

bench: setup
	$(BIN)/intentstream up
	$(BIN)/intentstream bench ingest --events 100000 --json --out benchmarks/results/ingest.json > /dev/null
	INTENTSTREAM_INTENT__ENABLED=false $(BIN)/intentstream eval --dataset taobao --json --out benchmarks/results/eval-taobao.json > /dev/null
	INTENTSTREAM_INTENT__ENABLED=false $(BIN)/intentstream eval --dataset rees46 --json --out benchmarks/results/eval-rees46.json > /dev/null
	$(BIN)/intentstream bench intent --dataset taobao --out benchmarks/results/intent-taobao.json > /dev/null
	$(BIN)/intentstream bench intent --dataset rees46 --out benchmarks/results/intent-rees46.json > /dev/null
	$(BIN)/python -m benchmarks.item_step --dataset taobao --out benchmarks/results/item-step-taobao.json > /dev/null
	$(BIN)/python -m benchmarks.item_step --dataset rees46 --out benchmarks/results/item-step-rees46.json > /dev/null
	$(BIN)/python -m benchmarks.sft_step --out benchmarks/results/sft-step.json > /dev/null
	$(BIN)/intentstream bench rl --dataset rees46 --seeds 3 --out benchmarks/results/rl-rees46.json > /dev/null
	$(BIN)/intentstream bench rl --dataset rees46 --fresh-share 0.3 --validation-share 0.15 --seeds 3 --out benchmarks/results/rl-rees46-fresh.json > /dev/null
	$(BIN)/intentstream bench rl --dataset taobao --fresh-share 0.3 --validation-share 0.15 --seeds 3 --out benchmarks/results/rl-taobao-fresh.json > /dev/null
	$(BIN)/intentstream bench rl --dataset taobao --fresh-share 0.3 --validation-share 0.15 --seeds 3 --steps 240 --lr 1e-4 --runs grpo_crs --eval-every 40 --out benchmarks/results/rl-taobao-fresh-budget.json > /dev/null
	$(BIN)/intentstream bench loop --dataset rees46 --out benchmarks/results/loop-rees46.json > /dev/null
	$(BIN)/intentstream bench reasoner --dataset rees46 --out benchmarks/results/reasoner-rees46.json > /dev/null
	$(BIN)/intentstream bench chaos --out benchmarks/results/chaos.json > /dev/null
	$(BIN)/intentstream bench overload --out benchmarks/results/overload.json > /dev/null
	$(BIN)/intentstream bench soak --out benchmarks/results/soak.json > /dev/null
	$(BIN)/python -m benchmarks.report

# Amazon Beauty under the papers' leave-one-out protocol, next to the published table (~47 minutes
# here alone: SASRec's training ~23, the replay 6, the sampled-softmax SASRec on validation 17; too
# long for `make bench`). The intent row adds the
# intent model's training on the train part (30 minutes measured here) and reasoning for the 22,363
# test users (43 minutes at 8.7 users/s); ~100 minutes in all with its SASRec. The item-step
# comparison on the validation items reuses that model (~5 minutes).
bench-beauty: setup
	$(BIN)/intentstream up
	$(BIN)/intentstream eval --dataset beauty --split leave-one-out --methods popularity,popularity_global,recent_history,itemknn,sasrec,oracle,random --json --out benchmarks/results/eval-beauty-loo.json > /dev/null
	$(BIN)/intentstream eval --dataset beauty --split leave-one-out --methods intent_served --json --out benchmarks/results/eval-beauty-loo-intent.json > /dev/null
	$(BIN)/python -m benchmarks.item_step --dataset beauty --split leave-one-out --out benchmarks/results/item-step-beauty.json > /dev/null
	$(BIN)/python -m benchmarks.intent_row --dataset beauty --split leave-one-out --bases tiny,smollm2 --users 300 --seed 0 --no-sequential --out benchmarks/results/intent-beauty-backbones.json > /dev/null
	$(BIN)/intentstream eval --dataset beauty --split leave-one-out --methods replay --json --out benchmarks/results/eval-beauty-loo-replay.json > /dev/null
	$(BIN)/python -m benchmarks.sasrec_loss --dataset beauty --split leave-one-out --full-from benchmarks/results/eval-beauty-loo.json --out benchmarks/results/sasrec-loss-beauty.json > /dev/null
	$(BIN)/python -m benchmarks.report

compose-check:
	docker-compose -f docker-compose.yml config -q
	docker-compose -f docker-compose.yml --profile gpu config -q

clean:
	rm -rf .pytest_cache */__pycache__
