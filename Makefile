# Two commands are all a user needs: `make demo` and `make test` (see README).
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-quick proto venv clean mutants

$(STAMP): requirements.txt requirements-dev.txt
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -r requirements-dev.txt
	$(VPY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

test: $(STAMP)
	$(VPY) -m pytest -q tests

bench: $(STAMP)
	$(VPY) bench/run.py

bench-quick: $(STAMP)
	$(VPY) bench/run.py --quick

# Regenerate the committed gRPC/protobuf code from the .proto.
proto: $(STAMP)
	cd federatedscope/core/communication/proto && \
	../../../../$(VPY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. fl.proto && \
	sed -i 's/^import fl_pb2 as fl__pb2/from . import fl_pb2 as fl__pb2/' fl_pb2_grpc.py

clean:
	rm -rf $(VENV) exp

# Mutation check: each mutant in tests/mutants.py must be caught by its tests (exit 1 if not).
mutants: $(STAMP)
	$(VPY) tests/mutants.py
