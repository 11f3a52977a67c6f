# weir: the two commands a new user types are `make demo` and `make test`.
# Both install what they need first (`make setup`): ONNX Runtime's shared library from PyPI.

PYTHON       ?= python3
ORT_VERSION  := 1.31.1
ORT_DIR      := $(CURDIR)/.ort
ORT_LIB      := $(ORT_DIR)/libonnxruntime.so
CARGO        ?= cargo

export ORT_DYLIB_PATH := $(ORT_LIB)

# nisshi: an Apache-Kafka-compatible broker (a single binary from crates.io), the real broker of
# the end-to-end tests that need one (timestamps lookups, restarts). Built once (about 16 minutes
# on 2 cores) into a cache outside the clone and reused.
NISSHI_VERSION := 0.8.1
NISSHI_ROOT    ?= $(HOME)/.cache/weir/nisshi-$(NISSHI_VERSION)
export NISSHI_BIN ?= $(NISSHI_ROOT)/bin/nisshi

.PHONY: setup nisshi ops-tools demo test bench model model-payments clean-ort

## setup: fetch libonnxruntime.so $(ORT_VERSION) (the `onnxruntime` wheel, no other packages).
setup: $(ORT_LIB)

$(ORT_LIB):
	@mkdir -p $(ORT_DIR)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps \
	    --target $(ORT_DIR)/py onnxruntime==$(ORT_VERSION)
	cp $(ORT_DIR)/py/onnxruntime/capi/libonnxruntime.so.$(ORT_VERSION) $(ORT_LIB)
	rm -rf $(ORT_DIR)/py

## nisshi: install the nisshi broker for the end-to-end tests (skipped when already installed).
nisshi: $(NISSHI_BIN)

$(NISSHI_BIN):
	$(CARGO) install nisshi --version $(NISSHI_VERSION) --locked --ignore-rust-version --root $(NISSHI_ROOT)

## ops-tools: Debian's prometheus (with promtool) and docker-compose, for the tests that run a real
## Prometheus against weir and validate docker-compose.yml (installed with apt when missing and
## root; otherwise those tests say loudly that they skip).
OPS_TOOLS := prometheus promtool docker-compose
ops-tools:
	@missing=""; for t in $(OPS_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing prometheus docker-compose (missing:$$missing)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends prometheus docker-compose >/dev/null 2>&1 \
	      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends prometheus docker-compose >/dev/null; } \
	      || echo "!!! could not install prometheus/docker-compose: their tests will skip !!!"; \
	  else \
	    echo "!!! missing:$$missing (not root, or no apt-get): their tests will skip !!!"; \
	  fi; \
	fi

## demo: generate ~240k simulated transactions on an embedded broker, score them, summarize.
demo: setup
	$(CARGO) run --release --quiet -p weir-tools --bin weir -- demo

## test: the whole suite (unit, doc and end-to-end tests; cargo builds the weir binary they run;
## tests that need a real broker start nisshi processes).
test: setup nisshi ops-tools
	$(CARGO) test --release --workspace --no-fail-fast

## bench: raw ONNX Runtime vs raw Kafka I/O vs the pipeline, in one run.
bench: setup
	$(CARGO) run --release --quiet -p weir-tools --bin weir -- bench

## model: retrain models/fraud/model.onnx on a training set exported by the feature store
## (needs pyarrow, scikit-learn, skl2onnx, onnx; see models/fraud/MODEL_CARD.md).
model: setup
	$(CARGO) run --release --quiet -p weir-tools --bin weir -- features export topologies/fraud-scoring.toml \
	    --generate-days 90 --seed 7 --out target/train.parquet
	$(PYTHON) models/fraud/train.py --training-set target/train.parquet --out models/fraud

## model-payments: retrain models/card-payments/model.onnx (the second topology's model) the same way.
model-payments: setup
	$(CARGO) run --release --quiet -p weir-tools --bin weir -- features export topologies/card-payments.toml \
	    --generate-days 60 --seed 7 --out target/payments-train.parquet
	$(PYTHON) models/card-payments/train.py --training-set target/payments-train.parquet --out models/card-payments

clean-ort:
	rm -rf $(ORT_DIR)
