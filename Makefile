# Two commands on a fresh machine: `make book` (the website) and `make test` (everything).
# Run `make help` for the other targets.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kdlib-installed
VENDOR := _vendor/static/VERSIONS.json
CHROMIUM ?= /usr/bin/chromium
# one torch thread per process: on a small shared machine two threads run many times slower
export OMP_NUM_THREADS ?= 1
# apt-get needs root: use sudo when we are not root
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get
# pip on these machines warns about every missing local index folder; keep the log readable
QUIET_PIP := sed -u '/is ignored: it is neither a file nor a directory/d'
# notebooks and tests run side by side in `book`, `test-unit` and `test-notebooks`: JOBS=N sets how
# many (default: one per core, at most 4)
JOBS ?=
XDIST = $(if $(JOBS),-n $(JOBS),-n auto --maxprocesses 4)
NBVAL := --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

.PHONY: help setup vendor chromium mcu-toolchain book book-all test test-unit test-notebooks \
        test-notebooks-avx2 test-wheel test-site student-pack bench clean

help:
	@echo "make book          build the website (creates .venv, runs every notebook): _build/html/index.html"
	@echo "                  (the notebooks run one per core; JOBS=N to choose)"
	@echo "make test          every test: unit tests, nbval over the notebooks, the book build, the browser tests"
	@echo "make test-unit     unit and property tests only (fast)"
	@echo "make test-notebooks-avx2  every notebook's asserts again on an emulated AVX2-only CPU"
	@echo "make test-wheel    build the wheel, install it in a fresh venv, run chapters from an empty folder"
	@echo "make student-pack  student-pack/: the notebooks without solutions, for a class"
	@echo "make bench         run bench/*.py and print the table of the book's performance figures"
	@echo "make clean         remove _build and student-pack"

setup: $(STAMP)

$(STAMP): requirements.txt requirements-mcu.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV) || { $(APT) update -q && $(APT) install -y -q python3-venv && python3 -m venv $(VENV); }
	$(PY) -m pip install -q -r requirements.txt 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q -r requirements-mcu.txt 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q "typing_extensions>=4.14" "anyio>=4.9" 2>&1 | $(QUIET_PIP)  # see requirements-mcu.txt
	$(PY) -m pip install -q --no-deps -e . 2>&1 | $(QUIET_PIP)
	@touch $@

# MathJax, require.js and the widget manager from the npm registry, so the site works offline
vendor: $(VENDOR)

$(VENDOR): tools/vendor_js.py tools/widgets_offline.js | $(STAMP)
	@command -v npm >/dev/null || { $(APT) update -q && $(APT) install -y -q npm; }
	$(PY) tools/vendor_js.py
	@touch $@

# Debian's chromium for the browser tests (never `playwright install`), and a colour emoji font so
# that the screenshots show the execution table's status marks (optional: the tests do not need it)
chromium:
	@test -x $(CHROMIUM) || { $(APT) update -q && $(APT) install -y -q chromium; }
	@fc-list 2>/dev/null | grep -qi "color emoji" || $(APT) install -y -q fonts-noto-color-emoji \
		|| { $(APT) update -q && $(APT) install -y -q fonts-noto-color-emoji; } \
		|| echo "note: no colour emoji font; the screenshots will show boxes for emoji"

# Chapter 11 builds its C code for a Cortex-M with Debian's ARM toolchain and runs it under QEMU
mcu-toolchain:
	@command -v gcc >/dev/null || { $(APT) update -q && $(APT) install -y -q gcc; }
	@command -v arm-none-eabi-gcc >/dev/null && command -v qemu-system-arm >/dev/null \
		&& test -f /usr/lib/arm-none-eabi/newlib/libc.a \
		|| { $(APT) update -q && $(APT) install -y -q gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm; }

# The notebooks run first, one per core (tools/execute_book.py, JOBS=N to choose), into the
# cache that jupyter-book reads: the build then only renders them.
EXECUTE_BOOK = $(PY) tools/execute_book.py $(if $(JOBS),--jobs $(JOBS))

book: setup vendor mcu-toolchain
	$(EXECUTE_BOOK)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "The book is at $(CURDIR)/_build/html/index.html"

# re-execute every notebook and rewrite every page (the cache is ignored)
book-all: setup vendor mcu-toolchain
	$(EXECUTE_BOOK) --all
	$(VENV)/bin/jupyter-book build --all . -W -n --keep-going
	@echo "The book is at $(CURDIR)/_build/html/index.html"

test-unit: setup mcu-toolchain
	$(PY) -m pytest tests -q -m "not site and not wheel" $(XDIST)

# nbval runs the notebooks side by side too, each worker taking whole notebooks (--dist loadfile:
# a notebook's cells share one kernel, in order)
test-notebooks: setup mcu-toolchain
	$(PY) -m pytest -q $(NBVAL) $(XDIST) --dist loadfile notebooks

# the machines moved from AMD (AVX2) to Intel (AVX-512, AMX): every assert must hold on both, so
# the notebooks run a second time with oneDNN and ATen held to AVX2 (outputs are not compared)
AVX2 := --env ONEDNN_MAX_CPU_ISA=AVX2 --env ATEN_CPU_CAPABILITY=avx2
test-notebooks-avx2: setup mcu-toolchain
	$(EXECUTE_BOOK) --check-only $(AVX2)

# a plain install: the wheel in a fresh virtual environment, the chapters run from an empty folder
test-wheel: setup
	$(PY) -m pytest -q -m wheel tests/test_wheel.py

# the browser tests read the site that `book` has just built
test-site: setup chromium
	KDLIB_SITE_REQUIRED=1 $(PY) -m pytest tests/test_site.py -q -m site

test: test-unit test-notebooks test-notebooks-avx2 test-wheel book
	$(MAKE) test-site

student-pack: setup
	$(PY) tools/student_pack.py --out student-pack --force

bench: setup
	$(PY) tools/bench_table.py

clean:
	rm -rf _build student-pack
