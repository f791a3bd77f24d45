# The two commands: `make book` and `make test` (see README.md). Both set up everything first.
PROFILE ?= tiny
VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
TORCH   := torch==2.13.0
STAMP   := $(VENV)/.installed
KERNEL  := $(VENV)/share/jupyter/kernels/python3/kernel.json
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system book test lab bench lint format clean

setup: system $(STAMP) $(KERNEL)

# From the distribution, only when missing: espeak-ng (CPU text-to-speech) and sox; chromium
# and its chromedriver, for the test that drives JupyterLab in a headless browser.
system:
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null && \
	  command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ( $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	      espeak-ng sox chromium chromium-driver >/dev/null )

# torch first: with it installed, nothing later pulls the multi-GB CUDA wheels.
$(STAMP): pyproject.toml requirements-whisper.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps -r requirements-whisper.txt
	touch $@

$(KERNEL): $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ichigo)" >/dev/null

book: setup
	$(VENV)/bin/ichigo book --profile $(PROFILE)

test: setup
	$(PY) -m pytest -q

# JupyterLab on this machine only, from the repository root, with the `Python 3 (ichigo)` kernel;
# open the URL it prints (it carries the access token).
lab: setup
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --no-browser --ServerApp.root_dir=$(CURDIR) \
	  $(if $(SUDO),,--allow-root)

# Throughput figures and ratios (never asserted in tests): the speech pipeline per stage and
# with 1 vs N workers, then tokens/s (and MFU on a GPU) of the profile's training step.
bench: setup
	$(VENV)/bin/ichigo bench data --profile $(PROFILE)
	$(VENV)/bin/ichigo bench train --profile $(PROFILE) --seq-len 512 --batch-size 4

lint:
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format:
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf _build runs/*/_book
