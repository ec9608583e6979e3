# Two commands are all a user needs: `make demo` and `make test` (see README).
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Python's bytecode cache on, whatever the calling shell says: with PYTHONDONTWRITEBYTECODE set,
# every process the suite starts recompiles the project from source and pytest rewrites the
# asserts of every test module again in each xdist worker (measured here: importing main.py
# 4.1 -> 2.7 CPU-s, collecting the suite 16 -> 7.7 CPU-s per worker). __pycache__ is ignored.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test test-fast lint bench bench-quick bench-peers proto venv clean mutation

$(STAMP): requirements.txt requirements-dev.txt
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -r requirements-dev.txt
	$(VPY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

# Both tiers (fast in-process tests and real-process tests, see PROCESS_MODULES in
# tests/conftest.py) in one pytest-xdist session; TEST_WORKERS=1 runs them serially. Three
# workers on two cores: the process tests spend part of their time waiting on timers and
# peers, and a third worker fills those waits. `--dist load`, not loadgroup (no test is grouped):
# under pytest-xdist 3.8.0's loadgroup a crashed worker's replacement deadlocks the end of the
# run (pytest-xdist#1378), which turned one crashed test into a run that never finished.
TEST_WORKERS ?= 3
PYTEST_XDIST = $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist load --maxschedchunk 1)

test: $(STAMP) lint
	$(VPY) -m pytest -q $(PYTEST_XDIST) --durations=15 tests

# The fast tier alone (seconds): for the edit-test loop, not a substitute for `make test`.
test-fast: $(STAMP)
	$(VPY) -m pytest -q $(PYTEST_XDIST) -m "not process" tests

# Import contracts (.importlinter): the core never imports cv/ or nlp/, communication/ never
# imports workers/. This checkout's code, not the editable install's. Then dead names: every
# name vulture reports is either deleted or explained in vulture_whitelist.py.
lint: $(STAMP)
	PYTHONPATH=$(CURDIR) $(VENV)/bin/lint-imports --config .importlinter
	$(VENV)/bin/vulture federatedscope harness bench vulture_whitelist.py --min-confidence 60 \
		--exclude '*_pb2.py,*_pb2_grpc.py'

# The peer framework (Flower, pinned) lives in its own venv, never in the project's: see
# bench/peers/requirements-flower.txt. torch there must be the CPU wheel, as in the project's.
PEERS := .venv-peers
PEERS_STAMP := $(PEERS)/.installed

$(PEERS_STAMP): bench/peers/requirements-flower.txt
	$(PY) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet -r bench/peers/requirements-flower.txt
	$(PEERS)/bin/python -c "import sys, torch; sys.exit(f'$(PEERS): torch {torch.__version__} is a CUDA build; it must be the CPU wheel: rm -rf $(PEERS) && make bench-peers' if torch.version.cuda else 0)"
	touch $(PEERS_STAMP)

# Full suite (large profile, peers included) and its quick variant; both regenerate
# bench/REPORT.md and README's cost table.
bench: $(STAMP) $(PEERS_STAMP)
	$(VPY) bench/run.py

bench-quick: $(STAMP) $(PEERS_STAMP)
	$(VPY) bench/run.py --quick

# Only the side-by-side run: plain-loop floor, standalone, distributed, Flower (QUICK=1: hidden 128, 2 rounds).
bench-peers: $(STAMP) $(PEERS_STAMP)
	$(VPY) bench/run.py --peers $(if $(QUICK),--quick)

# Regenerate the committed gRPC/protobuf code from the .proto.
proto: $(STAMP)
	cd federatedscope/core/communication/proto && \
	../../../../$(VPY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. fl.proto && \
	sed -i 's/^import fl_pb2 as fl__pb2/from . import fl_pb2 as fl__pb2/' fl_pb2_grpc.py

clean:
	rm -rf $(VENV) .venv-peers exp

# Mutation testing (mutmut) of the FL core, module by module, against the fast tests; writes
# doc/mutation.md, exit 1 on a survivor not listed in doc/mutation_equivalent.txt.
# MODULES="codec configs" limits it (names: see MODULES in the script).
mutation: $(STAMP)
	$(VPY) scripts/tools/mutation_table.py $(MODULES)
