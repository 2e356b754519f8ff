# jaxformer: common tasks. `make help` lists them.
PY ?= python3
WORKDIR ?= runs
STEPS ?=

# The data root (@data/ paths, named fine-tuning tasks): ../shared/data beside the repository when it exists and
# JAXFORMER_DATA is not set already; jaxformer itself defaults to ./data.
REPO_DIR := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
ifeq ($(JAXFORMER_DATA),)
ifneq ($(wildcard $(REPO_DIR)../shared/data/.),)
export JAXFORMER_DATA := $(abspath $(REPO_DIR)../shared/data)
endif
endif

# Named experiments (experiments/<name>.py files that set a PRESET; `make experiments` lists them): `make <name>`
# trains one into $(WORKDIR)/<name>.
EXPERIMENTS := $(subst _,-,$(basename $(notdir $(shell grep -l '^PRESET = ' $(REPO_DIR)experiments/*.py))))

ABLATIONS := positions norms attention mlp moe mask-rate objective size
ABLATE_TARGETS := $(addprefix ablate-,$(ABLATIONS))

.PHONY: help install install-test test test-fast lint train train-encoder shakespeare import-hf params bench bench-gpu gpu-suite clean \
	ner report compare ablate-all $(ABLATE_TARGETS) notebooks experiments $(EXPERIMENTS)

# Every target with a `## what it does` comment, then one line per ablation grid (a static pattern rule).
help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | \
		awk -F'\t' '{ printf "  %-18s %s\n", $$1, $$2 }'
	@for grid in $(ABLATIONS); do printf "  %-18s %s\n" "ablate-$$grid" "ablation grid '$$grid' (see experiments/ablations.py)"; done

install:  ## install jaxformer (runtime only)
	$(PY) -m pip install -e .

install-test:  ## install jaxformer with the test, Hugging Face and TensorFlow extras
	$(PY) -m pip install -e ".[dev,hf,tf]"

test: install-test  ## install and run the whole test suite (what CI runs)
	$(PY) -m pytest -q

test-fast:  ## tests without the slow end-to-end ones
	$(PY) -m pytest -q -m "not slow"

lint:  ## ruff over the package, tests, benchmarks and experiments
	ruff check jaxformer tests benchmarks experiments

train:  ## the README's main job: the default decoder on the built-in offline corpus
	jaxformer train --preset decoder-tiny --workdir $(WORKDIR)/decoder-tiny

train-encoder:  ## the same data and step, as a masked-LM encoder
	jaxformer train --preset encoder-tiny --workdir $(WORKDIR)/encoder-tiny

shakespeare:  ## nanoGPT's CPU shakespeare_char "baby" run (needs tinyshakespeare/ under JAXFORMER_DATA)
	jaxformer train --preset shakespeare-char-cpu --workdir $(WORKDIR)/shakespeare-char-cpu

params:  ## parameters and FLOPs per component of the named presets
	for p in decoder-tiny encoder-tiny gpt2-small bert-base albert-base gpt3-175b; do echo "== $$p"; jaxformer params --preset $$p; done

experiments:  ## list the named experiments (`make <name>` trains one; each file's docstring has its expected result)
	jaxformer params --list-experiments

$(EXPERIMENTS):
	jaxformer train --experiment $@ --workdir $(WORKDIR)/$@

ner:  ## WNUT-17 NER: encoder vs decoder (and a random-init backbone) x 3 seeds; table + $(WORKDIR)/ner/results.json
	$(PY) -m experiments.ner --out $(WORKDIR)/ner

bench:  ## benchmarks, writing JSON under bench/
	$(PY) benchmarks/bench_input.py --out bench/input.json
	$(PY) benchmarks/bench_decode.py --out bench/decode.json
	$(PY) benchmarks/bench_train.py --out bench/results.json
	$(PY) benchmarks/bench_dispatch.py --out bench/dispatch.json

ab-step:  ## one config change's speed, baseline and variant steps alternated in one process (VARIANT=key=value)
	$(PY) benchmarks/ab_step.py --variant "$(VARIANT)" --out bench/ab_step.json

bench-gpu:  ## GPT-2 small in bf16 on the accelerator it finds: tokens/s and MFU against its published peak
	$(PY) benchmarks/bench_gpu.py --out bench/gpu.json

gpu-suite:  ## on a GPU: the fused kernels' tests, then bench-gpu with its variants (cuDNN vs XLA, padding, ...)
	bash benchmarks/gpu_suite.sh bench/gpu

import-hf:  ## import a local Hugging Face GPT-2/BERT folder (HF=path/to/folder) as the run runs/imported
	jaxformer import-hf $(HF) --workdir $(WORKDIR)/imported

clean:  ## remove runs, benchmark output and the pytest cache
	rm -rf $(WORKDIR) bench .pytest_cache

# Ablation grids (experiments/ablations.py): SCALE=cpu|full; CELL=i runs one cell (a job array task), SEEDS="0 1 2"
# the seeds, STEPS the steps per run; records are appended to $(RESULTS)/<grid>.jsonl, finished runs skipped.
SCALE ?= cpu
CELL ?=
SEEDS ?=
RESULTS ?= results
ABLATE_ARGS = --scale $(SCALE) --out $(WORKDIR)/ablations --results $(RESULTS) $(if $(CELL),--cell $(CELL)) \
	$(if $(SEEDS),--seeds $(SEEDS)) $(if $(STEPS),--steps $(STEPS))
$(ABLATE_TARGETS): ablate-%:
	$(PY) -m experiments.ablations $* $(ABLATE_ARGS)

report:  ## tables (mean ± std over seeds) and plots of every ablation grid's records in $(RESULTS)/
	$(PY) -m experiments.report --results $(RESULTS)

ablate-all: $(ABLATE_TARGETS)  ## every ablation grid in turn

SCALE ?= cpu
TASKS ?=
compare:  ## encoder vs decoder at matched training FLOPs, fine-tuned and probed (SCALE=cpu|full|smoke) -> results/compare
	$(PY) -m experiments.compare --scale $(SCALE) --work $(WORKDIR)/compare --out results/compare \
		$(if $(TASKS),--tasks $(TASKS))

notebooks:  ## execute the jupytext notebooks into .ipynb (needs the dev extra: jupytext, nbclient, ipykernel)
	cd notebooks && for nb in *.py; do jupytext --to ipynb --execute $$nb || exit 1; done
