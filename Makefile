# dualsynth — two commands do all set-up on a fresh machine:
#   make run    creates .venv if missing, installs, runs the workflow on the embedded default (quick preset; the
#               study's core variants — make run VARIANTS=all trains the paper's 47)
#   make test   creates .venv if missing, installs, runs all tests
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= quick
EXPERIMENT ?= $(PRESET)
DATA ?= params/data/ndfeb_default.yaml
STAGES ?= all
VARIANTS ?= core
STUDY_VARIANTS ?= all
SEEDS ?= 0
WORKERS ?= 2
PYTEST_ARGS ?=

.PHONY: install run study report test test-fast lab kernel bench clean-outputs strip-notebooks

$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -c requirements.lock -e '.[test]'
	@touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m dualsynth.batch chain --preset $(PRESET) --experiment $(EXPERIMENT) --data $(DATA) --stages $(STAGES) \
		--variants $(VARIANTS) --seeds $(SEEDS) --workers $(WORKERS) --matched-controls
	$(PY) -m dualsynth.report "$${DUALSYNTH_OUTPUTS:-outputs}/$(EXPERIMENT)" --html

# the paper-scale study on a GPU machine: make study PRESET=paper
study: install
	$(PY) -m dualsynth.batch chain --preset $(PRESET) --experiment $(EXPERIMENT) --data $(DATA) --stages all \
		--variants $(STUDY_VARIANTS) --seeds $(SEEDS) --workers $(WORKERS)
	$(PY) -m dualsynth.report "$${DUALSYNTH_OUTPUTS:-outputs}/$(EXPERIMENT)" --html

# outputs/<experiment>/report.html: the executed notebooks (pages under report/) and the results statement
report: install
	$(PY) -m dualsynth.report "$${DUALSYNTH_OUTPUTS:-outputs}/$(EXPERIMENT)" --html

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# JupyterLab with the project's environment (its python3 kernel is the venv's); as root (containers) --allow-root
lab: install
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

# register the venv as a kernel named "dualsynth" for a Jupyter installed elsewhere
kernel: install
	$(PY) -m ipykernel install --user --name dualsynth --display-name "Python (dualsynth)"

# benchmarks (not tests): bench/results/*.json, tables in BENCHMARKS.md (about 70 min on 2 loaded CPU cores)
bench: install
	$(PY) bench/bench_sampler.py
	$(PY) bench/bench_vqvae.py
	$(PY) bench/bench_vqvae_steady.py
	$(PY) bench/bench_unet.py
	$(PY) bench/bench_study.py
	$(PY) bench/render.py

# notebooks are committed without outputs (cell tags kept)
strip-notebooks: install
	$(PY) -c "import glob, nbformat; [nbformat.write(nb, f) for f in glob.glob('notebooks/*.ipynb') for nb in [nbformat.read(f, as_version=4)] if [c.update(outputs=[], execution_count=None) for c in nb.cells if c.cell_type == 'code'] is not None]"

clean-outputs:
	find outputs -mindepth 1 -maxdepth 1 ! -name .gitkeep -exec rm -rf {} +
