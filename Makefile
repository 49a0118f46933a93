# mergeops: `make demo` and `make test` each set up .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# No hub calls, ever: the demo models are built locally and regulated networks need the same.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
export DO_NOT_TRACK := 1

.PHONY: venv demo test stack-test bench bench-evolve bench-pipeline stats clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not heavy"

# Real servers on loopback (an authenticated MLflow server on PostgreSQL with S3 artifacts, the
# governance service, a Prefect server on PostgreSQL with a work pool and two workers, Dask) and the long end-to-end tests (marked heavy: every crash point, the
# evolve flow, the parent-update run of your own models, a recalibrated RegMean recipe's re-run and verify, the
# seed-pair alignment, the pinned zoo build).
stack-test: $(STAMP)
	$(BIN)/python -m pytest -q -m heavy

demo: $(STAMP)
	BIN=$(BIN) bash scripts/demo.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(MAKE) bench-evolve

# Evolutionary merging on the demo zoo (built first if missing): candidate throughput in memory
# against a merge + evaluate loop, the ablation (M2N2, M2N2 alpha = 0, CMA-ES, random search; 3
# seeds, held-out eval split), the default search from the sequential RegMean recipe (600
# candidates, 300 dev prompts per domain), and M2N2 against CMA-ES from scratch on sklearn's digits.
bench-evolve: $(STAMP)
	@test -f data/zoo/zoo.json || $(BIN)/mergeops zoo build --profile demo --out data/zoo
	@test -f data/stats/swap.sequential.safetensors || $(MAKE) stats
	$(BIN)/python benchmarks/evolve_throughput.py --zoo data/zoo
	$(BIN)/python benchmarks/evolve_ablation.py --zoo data/zoo
	$(BIN)/python benchmarks/evolve_ablation.py --zoo data/zoo --recipe recipes/demo-regmean-sequential.yaml \
	  --arms CMA-ES --seeds 1 --budget 600 --dev-size 300 --out bench-out/evolve-regmean-sequential
	$(BIN)/python benchmarks/evolve_digits.py

# RegMean statistics of the demo zoo's specialists, from 256 records of each one's own train split
# (never eval): Gram matrices of each linear layer's inputs for recipes/demo-regmean.yaml, and the
# sequential ones (each layer measured with the layers before it merged) for
# recipes/demo-regmean-sequential.yaml.
stats: $(STAMP)
	@test -f data/zoo/zoo.json || $(BIN)/mergeops zoo build --profile demo --out data/zoo
	for d in reverse sort swap; do \
	  $(BIN)/mergeops calibrate data/zoo/models/$$d --data data/zoo/domains/$$d/train.jsonl --kind gram \
	    --samples 256 --out data/stats/$$d.gram.safetensors || exit 1; \
	done
	$(BIN)/mergeops calibrate recipes/demo-regmean-sequential.yaml --kind sequential --samples 256 \
	  --data data/zoo/domains/reverse/train.jsonl --data data/zoo/domains/sort/train.jsonl \
	  --data data/zoo/domains/swap/train.jsonl

# The pipeline's own cost beyond merging and evaluating (see benchmarks/pipeline_overhead.py).
bench-pipeline: $(STAMP)
	$(BIN)/python benchmarks/pipeline_overhead.py

clean:
	rm -rf .mergeops data bench-out
