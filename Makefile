# Two entry points for a fresh clone with only Python 3.11+: `make demo` and `make test`.
# Everything installs into .venv inside the repository. TF=gpu selects tensorflow[and-cuda].
# `make upscalers` adds the optional real-generator benchmark extra (and, as root, the two Debian
# libraries its ncnn networks need, and the Debian packages of its photographs: `make photos`);
# `make test` installs it too so its tests run, `make demo` not.
PYTHON ?= python3
TF ?= cpu
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(TF)
UPSCALERS_STAMP := $(VENV)/.installed-$(TF)-upscalers
NATIVE_LIBS := libvulkan.so.1 libomp.so.5
DEBIAN_LIBS := libvulkan1 libomp5
# The photographs of the upscaler benchmark (attribnet/lab/datasets/packaged_photos.json), ~110 MB.
DEBIAN_PHOTOS := gcompris-qt-data mate-backgrounds lomiri-wallpapers-16.04 tuxpaint-data
LDCONFIG := $(shell command -v ldconfig 2>/dev/null || echo /sbin/ldconfig)
DEMO_OUT ?= demo-out

export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export TF_CPP_MIN_LOG_LEVEL=2

.PHONY: install upscalers native-libs photos demo test proto clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(TF),dev]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

$(UPSCALERS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[$(TF),dev,upscalers]'
	touch $@

# Checked on every run (a stamp cannot tell that the machine lost a library): as root with
# apt-get, installs the Debian packages when a library is missing; otherwise says what to run.
native-libs:
	@[ "$$(uname -s)" = Linux ] || exit 0; \
	missing=""; for lib in $(NATIVE_LIBS); do $(LDCONFIG) -p 2>/dev/null | grep -q "$$lib" || missing="$$missing $$lib"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $(DEBIAN_LIBS) (missing:$$missing)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_LIBS); \
	else \
		echo "warning: missing$$missing: install the Debian/Ubuntu packages $(DEBIAN_LIBS) as root (the upscaler networks will not load)"; \
	fi

# The same for the photographs: as root with apt-get, installs the packages that are missing.
photos:
	@command -v dpkg-query >/dev/null || { echo "warning: no dpkg here: the packaged photos ($(DEBIAN_PHOTOS)) cannot be installed"; exit 0; }; \
	missing=""; for pkg in $(DEBIAN_PHOTOS); do dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "ok installed" || missing="$$missing $$pkg"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing the photo packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "warning: missing$$missing: install these Debian packages as root (the upscaler benchmark's photographs)"; \
	fi

upscalers: $(UPSCALERS_STAMP) native-libs photos

# The demo refuses to overwrite an earlier run; `make demo` starts afresh in $(DEMO_OUT).
demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/attribnet demo --out $(DEMO_OUT)

test: upscalers
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=15 tests

# Regenerate the gRPC/protobuf code beside its .proto (a test checks it is current).
proto: $(STAMP)
	$(BIN)/python -m shared_backbone.protocol.proto.generate

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
