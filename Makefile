# Two commands on a fresh machine: `make book` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kdlib-installed
# pip on these machines warns about every missing local index folder; keep the log readable
QUIET_PIP := sed -u '/is ignored: it is neither a file nor a directory/d'

.PHONY: setup book test test-unit test-notebooks bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q --no-deps -e . 2>&1 | $(QUIET_PIP)
	@touch $@

book: setup
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "The book is at $(CURDIR)/_build/html/index.html"

test-unit: setup
	$(PY) -m pytest tests -q

test-notebooks: setup
	$(PY) -m pytest -q --nbval-lax --nbval-current-env --sanitize-with tests/nbval_sanitize.cfg notebooks

test: test-unit test-notebooks book

bench: setup
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f; done

clean:
	rm -rf _build
