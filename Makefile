# pacs-node: the two commands a new user needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch and torchvision are installed as a pinned pair before the package itself, so the
# package's open ranges never pull a second multi-gigabyte build. Override for another platform,
# e.g. `make install TORCH_SPEC="torch==2.9.1 torchvision==0.24.1"` on aarch64.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
CONFIG ?= config.yaml
STAMP := $(VENV)/.pacs-node-installed
# The OHIF viewer the node serves at /viewer: the prebuilt npm package @ohif/app, pinned by
# version and by the registry's sha512 of its tarball (`npm view @ohif/app@3.13.2 dist.integrity`),
# unpacked into $(OHIF_DIR)/dist (git-ignored) by scripts/fetch_ohif.py, which needs npm.
OHIF_VERSION := 3.13.2
OHIF_INTEGRITY := sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
OHIF_DIR := .cache/ohif
# Debian packages of the peers the tests talk to (dcmtk, dciodvfy, Orthanc with DICOMweb,
# the PostgreSQL and Redis servers the tests start when none answers on their ports, and the
# chromium that playwright drives in the viewer test: no browser download, and the
# prometheus that scrapes the node's /metrics in the observability test).
PEER_PACKAGES := dcmtk dicom3tools orthanc orthanc-dicomweb postgresql redis-server chromium \
  prometheus
# Orthanc 1.12.7 from Debian trixie, privately unpacked (scripts/fetch_orthanc.sh): Debian 12's
# 1.10.1 cannot pull by C-GET, which one test needs of a PACS.
ORTHANC_TRIXIE_DIR := .cache/orthanc-trixie
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install viewer run test peers lint bench demo-weights clean

install: $(STAMP) viewer

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_SPEC)
	$(PIP) install --quiet -e '.[test]'
	@touch $(STAMP)

# Does nothing when $(OHIF_DIR)/installed.json already names these pins.
viewer:
	@$(PYTHON) scripts/fetch_ohif.py --version $(OHIF_VERSION) --integrity $(OHIF_INTEGRITY) \
	  --dest $(OHIF_DIR) --base /viewer/

run: install
	$(VENV)/bin/pacs-node serve --config $(CONFIG)

peers:
	@missing=""; \
	for cmd in storescu:dcmtk dciodvfy:dicom3tools Orthanc:orthanc redis-server:redis-server \
	    chromium:chromium prometheus:prometheus; do \
	  command -v $${cmd%%:*} >/dev/null 2>&1 || missing="$$missing $${cmd##*:}"; \
	done; \
	[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$$missing orthanc-dicomweb"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing test peers:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@scripts/fetch_orthanc.sh $(ORTHANC_TRIXIE_DIR)

test: install peers
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy pacs_node workers models storage

bench: install
	$(PY) benchmarks/synth_speed.py

# Reproduces models/weights/demo_global_pool.pt from synthetic data only, in eight stages:
# 256 px, a fine-tune at 384 px (progressive resizing), two fine-tunes at 384 px on fresh,
# larger synthetic sets (seeds 1001, 1002), two at 512 px on 8000 + 7000 fresh studies
# (seeds 1003, 1004), then two at 512 px on 1200 + 3000 studies with artifacts (1005, 1006). --bf16 is used only where it runs natively (CUDA, AVX512-BF16/AMX);
# elsewhere training runs in float32. Stages 1-2 took about 90 min on 2 shared cores with
# native bf16, stages 3-4 68 + 44 min on 2 AVX2 cores in float32, stages 5-6 7 + 6 min on
# one H100 with 16 cores (README "Demo weights"); on 2 CPU cores they would take about a day.
DEMO_WORKERS ?= $(shell nproc)
DEMO_PARALLEL := --synthetic-workers $(DEMO_WORKERS) --data-workers $(DEMO_WORKERS)
DEMO_DATA := --synthetic --demo --stages 2 --pooling max --augment mild --batch-size 16 --bf16
# Stages 1-6 saw clean synthetic films; 7-8 add the artifacts of real ones (collimation,
# markers, text, rulers, casts, hardware, grid lines, processing) on a frozen stem and first
# stage, which trains ~2x faster on a CPU. Every stage calibrates its domain check.
DEMO_CLEAN := --no-synthetic-artifacts
DEMO_FREEZE := --freeze features.0 --freeze features.1 --freeze features.4
demo-weights: install
	$(VENV)/bin/pacs-node train --model-type global_pool $(DEMO_DATA) --run-dir runs/demo-stage1 $(DEMO_CLEAN) \
	  --synthetic-studies 800 --data-seed 1000 \
	  --input-size 256 --epochs 30 --lr 2e-3 --out runs/demo-stage1.pt
	$(VENV)/bin/pacs-node train --model-type global_pool $(DEMO_DATA) --run-dir runs/demo-stage2 $(DEMO_CLEAN) \
	  --synthetic-studies 800 --data-seed 1000 \
	  --input-size 384 --epochs 14 --lr 1e-3 --init-from runs/demo-stage1.pt --out runs/demo-stage2.pt
	$(VENV)/bin/pacs-node train --model-type global_pool $(DEMO_DATA) --run-dir runs/demo-stage3 $(DEMO_CLEAN) \
	  --synthetic-studies 2400 --data-seed 1001 --synthetic-workers 2 \
	  --input-size 384 --epochs 5 --lr 5e-4 --init-from runs/demo-stage2.pt --out runs/demo-stage3.pt
	$(VENV)/bin/pacs-node train --model-type global_pool $(DEMO_DATA) --run-dir runs/demo-stage4 $(DEMO_CLEAN) \
	  --synthetic-studies 2400 --data-seed 1002 --synthetic-workers 2 \
	  --input-size 384 --epochs 3 --lr 3e-4 --init-from runs/demo-stage3.pt --out runs/demo-stage4.pt
	$(VENV)/bin/pacs-node train --model-type global_pool $(DEMO_DATA) --run-dir runs/demo-stage5 $(DEMO_CLEAN) \
	  --synthetic-studies 8000 --data-seed 1003 $(DEMO_PARALLEL) \
	  --input-size 512 --epochs 8 --lr 5e-4 --init-from runs/demo-stage4.pt --out runs/demo-stage5.pt
	$(VENV)/bin/pacs-node train --model-type global_pool $(DEMO_DATA) --run-dir runs/demo-stage6 $(DEMO_CLEAN) \
	  --synthetic-studies 7000 --data-seed 1004 $(DEMO_PARALLEL) \
	  --input-size 512 --epochs 8 --lr 3e-4 --init-from runs/demo-stage5.pt --out runs/demo-stage6.pt
	$(VENV)/bin/pacs-node train --model-type global_pool $(DEMO_DATA) --run-dir runs/demo-stage7 \
	  --synthetic-studies 1200 --data-seed 1005 $(DEMO_PARALLEL) $(DEMO_FREEZE) \
	  --input-size 512 --epochs 4 --lr 5e-4 --init-from runs/demo-stage6.pt --out runs/demo-stage7.pt
	$(VENV)/bin/pacs-node train --model-type global_pool $(DEMO_DATA) --run-dir runs/demo-stage8 \
	  --synthetic-studies 3000 --data-seed 1006 $(DEMO_PARALLEL) $(DEMO_FREEZE) \
	  --input-size 512 --epochs 6 --lr 3e-4 --init-from runs/demo-stage7.pt \
	  --out models/weights/demo_global_pool.pt

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache $(OHIF_DIR) test-artifacts
