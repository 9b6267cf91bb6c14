# nvbox: `make run` runs the main job, `make test` runs every test.  Both set
# up everything they need on a fresh machine (Python packages, node packages for
# the Kaitai compiler, Debian's qemu-utils, dumpasn1 and openssl).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed


.PHONY: run test install tools kaitai tour corpus corpus-check corpus-dist bench bench-quick fuzz crash-full reliability-report clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,fuse,map,conformance]'
	touch $(STAMP)

install: $(STAMP)

# Debian tools the tests use for real (never mocked): qemu-img/qemu-io,
# dumpasn1, openssl, strace; for the live image: fuse3 (libfuse3, which the
# mfusepy binding loads through ctypes), swtpm and tpm2-tools, nbdkit with its Python plugin and
# libnbd's nbdinfo and nbdsh (python3-libnbd), qemu-system-x86 with OVMF, and qemu-storage-daemon (the
# FUSE peer).  Installed only when missing.
tools:
	@missing=""; \
	command -v qemu-img >/dev/null || missing="$$missing qemu-utils"; \
	command -v dumpasn1 >/dev/null || missing="$$missing dumpasn1"; \
	command -v openssl  >/dev/null || missing="$$missing openssl"; \
	command -v strace   >/dev/null || missing="$$missing strace"; \
	command -v fusermount3 >/dev/null || missing="$$missing fuse3"; \
	command -v swtpm    >/dev/null || missing="$$missing swtpm"; \
	command -v swtpm_setup >/dev/null || missing="$$missing swtpm-tools"; \
	command -v tpm2_nvwrite >/dev/null || missing="$$missing tpm2-tools"; \
	command -v nbdkit   >/dev/null || missing="$$missing nbdkit"; \
	[ -e /usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-python-plugin.so ] || \
	  ls /usr/lib/*/nbdkit/plugins/nbdkit-python-plugin.so >/dev/null 2>&1 || missing="$$missing nbdkit-plugin-python"; \
	command -v nbdinfo  >/dev/null || missing="$$missing libnbd-bin"; \
	command -v nbdsh    >/dev/null || missing="$$missing python3-libnbd"; \
	command -v qemu-system-x86_64 >/dev/null || missing="$$missing qemu-system-x86"; \
	command -v qemu-storage-daemon >/dev/null || missing="$$missing qemu-system-common"; \
	[ -e /usr/share/OVMF/OVMF_VARS_4M.fd ] || missing="$$missing ovmf"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

kaitai: $(STAMP)
	@if [ -f ksy/package.json ]; then $(MAKE) -s -C ksy build PY=$(abspath $(PY)); fi

tour: $(STAMP)
	$(VENV)/bin/python reference/tour.py

run: $(STAMP) tools kaitai
	$(PY) -m conformance run --impl "$(abspath $(PY)) -m nvbox.adapter" --expect conformance/reference-expectations.txt
	$(MAKE) -s tour

test: $(STAMP) tools kaitai
	$(PY) -m pytest reference/tests ksy/tests conformance/tests benchmarks/tests -q -p no:cacheprovider
	$(MAKE) -s bench-quick

clean:
	rm -rf $(VENV) ksy/build ksy/node_modules .pytest_cache .benchmarks

# The quick run's results go to build/bench/ (not into the tree); report.py exits 1
# when a count target was missed, so those fail `make test`; timing ratios are advisory.
BENCH_OUT ?= build/bench

bench-quick: $(STAMP) tools
	mkdir -p $(BENCH_OUT)
	NVBOX_BENCH=quick $(PY) -m pytest benchmarks/test_bench_*.py -q -p no:cacheprovider --benchmark-json=$(BENCH_OUT)/raw-quick.json
	$(PY) benchmarks/report.py $(BENCH_OUT)/raw-quick.json --name quick --outdir $(BENCH_OUT) --no-readme

bench: $(STAMP) tools
	NVBOX_BENCH=full $(PY) -m pytest benchmarks/test_bench_*.py -q -p no:cacheprovider --benchmark-json=benchmarks/results/raw-full.json
	$(PY) benchmarks/report.py benchmarks/results/raw-full.json --name latest
	$(PY) benchmarks/report.py benchmarks/results/raw-full.json --name timestamp --no-readme

# docs/RELIABILITY.md: the crash, fault, fuzz and concurrency runs at CI size (about 5
# minutes on 2 cores), with the totals of the last `make crash-full` when there are any.
reliability-report: $(STAMP)
	$(PY) reference/tests/reliability_report.py $$([ -f benchmarks/results/crash-full.json ] && echo --crash-full benchmarks/results/crash-full.json)

# The long crash exploration: 1,175,742 crash states over 8,614 workloads.
# The first 1,000,000 take about 10 minutes on 2 cores, the multi-level tail
# hours; totals are saved as the run goes, so it can be stopped.  CI runs the
# 33,000-state subset in make test.
crash-full: $(STAMP)
	NVBOX_CRASH=full $(PY) reference/tests/crash_full.py --json benchmarks/results/crash-full.json

# Coverage-guided fuzzing of the reader with atheris (not a CI step).
# FUZZ_TIME=seconds (default 600); crashers land in the working directory.
fuzz: $(STAMP)
	$(PY) -c "import atheris" 2>/dev/null || $(PY) -m pip install -q atheris
	mkdir -p .fuzz-corpus
	$(PY) reference/fuzz/fuzz_open.py -max_total_time=$${FUZZ_TIME:-600} -rss_limit_mb=512 -timeout=2 .fuzz-corpus

corpus: $(STAMP)
	$(PY) -m conformance.generate

corpus-check: $(STAMP)
	$(PY) -m conformance.generate --check

corpus-dist: $(STAMP)
	$(PY) -m conformance.dist
