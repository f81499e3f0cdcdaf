# Two entry points for a fresh clone with only Python 3.11+: `make demo` and `make test`.
# Everything installs into .venv inside the repository. TF=gpu selects tensorflow[and-cuda].
PYTHON ?= python3
TF ?= cpu
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(TF)
DEMO_OUT ?= demo-out

export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export TF_CPP_MIN_LOG_LEVEL=2

.PHONY: install demo test proto clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(TF),dev]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# The demo refuses to overwrite an earlier run; `make demo` starts afresh in $(DEMO_OUT).
demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/attribnet demo --out $(DEMO_OUT)

test: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q tests

# Regenerate the gRPC/protobuf code beside its .proto (a test checks it is current).
proto: $(STAMP)
	$(BIN)/python -m shared_backbone.protocol.proto.generate

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
