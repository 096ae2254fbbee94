# Two commands set up everything on a fresh clone:
#   make demo   create .venv, install GARAGE, run `garage run --profile test`
#   make test   same .venv, run the whole default test suite
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
OUT    ?= results/test
# where torch comes from: PyPI by default; CI sets PyTorch's CPU index, since PyPI's Linux
# wheel is the multi-GB CUDA build (.github/workflows/python-tests.yml)
TORCH_INDEX_URL ?=

.PHONY: install demo test test-slow bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# pinned: 2.13.0 is the local CPU wheel; an unpinned torch pulls the multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/garage run --profile test --outdir $(OUT)
	@echo
	@echo "GARAGE demo finished. Results are in $(OUT)/:"
	@echo "  synthetic cells : $(OUT)/gan/*.synthetic.h5ad"
	@echo "  metrics         : $(OUT)/evaluate/*.garage_metrics.json (+ per_type.tsv, UMAP and per-type PNGs)"
	@echo "  report          : $(OUT)/multiqc/multiqc_report.html"

# two workers by default (CI and this project's reference machine have 2 cores); each test file
# runs whole on one worker, so module fixtures are built once, and files are handed out in
# collection order (tests/python/conftest.py puts the longest first; xdist's own reorder is by
# test count). TEST_WORKERS=0 (or empty) runs serially.
TEST_WORKERS ?= 2

test: install
	$(VENV)/bin/pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test-slow: install
	$(VENV)/bin/pytest -m slow

bench: install
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench

lint: install
	bash tools/nflint/check.sh

clean:
	rm -rf $(VENV) results .pytest_cache

# Pipeline images (one Dockerfile, VARIANT=cpu|cuda); names match nextflow.config's
# params.container_registry / params.container_tag. Extra docker flags: DOCKER_BUILD_ARGS=...
IMAGE_REGISTRY    ?= ghcr.io/garage-sc
IMAGE_TAG         ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DOCKER_BUILD_ARGS ?=

.PHONY: image image-gpu

image:
	docker build --build-arg VARIANT=cpu --build-arg GARAGE_VERSION=$(IMAGE_TAG) $(DOCKER_BUILD_ARGS) \
		-t $(IMAGE_REGISTRY)/garage:$(IMAGE_TAG) .

image-gpu:
	docker build --build-arg VARIANT=cuda --build-arg GARAGE_VERSION=$(IMAGE_TAG) $(DOCKER_BUILD_ARGS) \
		-t $(IMAGE_REGISTRY)/garage-cuda:$(IMAGE_TAG) .
