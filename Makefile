# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use.
# `make test-wdl` (not part of `make test`: minutes, root) runs the WDL workflow through podman.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of torch lies on local disk here; installing it first keeps pip from
# pulling a multi-GB CUDA build for the open `torch>=2.6` requirement.
TORCH_PIN ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-fast test-wdl bench clean report-screenshot mutate

venv: $(STAMP)

# After the editable install, the checkout goes on sys.path too (vnp-checkout.pth): a folder named vnp
# that holds the clone then cannot shadow the package (as a namespace package) when `python -m
# vnp.predict` runs from its parent folder, as setuptools warns it could.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[test]"
	$(PY) -c "import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()['purelib'], 'vnp-checkout.pth').write_text('$(CURDIR)\\n')"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m vnp.demo

# The demo's report rendered by headless Chromium (Debian's `chromium`) to demo_out/report.png.
report-screenshot: demo
	$(PY) -m tests.chromium demo_out/report.html demo_out/report.png

# pytest-xdist workers (one torch thread each, tests/conftest.py): the multi-process tests mostly wait
# (torchrun start-ups, rendezvous, signals), so more workers than cores pay. Plain `pytest` runs serially.
TEST_WORKERS ?= 4
FAST_WORKERS ?= 3

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# The developers' loop: the single-process tests only (the multi-process runs are marked slow).
test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(FAST_WORKERS) -m "not slow"

# launch/wdl/vnp.wdl run by miniwdl through podman in a CPU image built offline (debootstrap +
# podman import; launch/containers/cpu-image.sh), its outputs checked as the Broad's steps read them.
test-wdl: $(STAMP)
	PY=$(abspath $(PY)) launch/wdl/test-wdl.sh

# Mutation testing of the core modules (cosmic-ray, the `dev` extra): each module's mutants against its
# own fast tests, mutated in place in this checkout (leave the tree alone meanwhile). Hours in full;
# MUTATE_ARGS="--sample 30 filters folder" runs 30 random mutants of each named module.
MUTATE_ARGS ?=
mutate: $(STAMP)
	$(PY) -c "import cosmic_ray" 2>/dev/null || $(PIP) install -q -e ".[dev]"
	nice $(PY) -m tests.mutation $(MUTATE_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) demo_out demo_out_model bench_out mutation_out
