PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_CUSTOMERS ?= 50000
DEMO_MONTHS ?= 12
DEMO_PORT ?= 8000

.PHONY: install demo test lint bench audit clean lock image image-test image-tools

# Installs only what the lock files name, each file checked against its SHA-256
# (--require-hashes): a package swapped on the index, or a dependency nobody reviewed,
# stops the install. Build tools come from their own lock, so nothing is fetched unhashed
# for a build either (--no-build-isolation). `make lock` regenerates the locks.
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	--index-url https://pypi.org/simple --quiet

$(STAMP): pyproject.toml requirements/build.lock requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements/build.lock
	$(BIN)/pip install --quiet --require-hashes --no-build-isolation -r requirements/dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/recommender demo-data $(DEMO_DIR)/bank --customers $(DEMO_CUSTOMERS) --months $(DEMO_MONTHS) --seed 7 --rehearsal
	$(BIN)/recommender train $(DEMO_DIR)/bank --report $(DEMO_DIR)/report.json
	$(BIN)/recommender score $(DEMO_DIR)/bank --tier A --out $(DEMO_DIR)/offers_tier_A.csv
	rm -f $(DEMO_DIR)/api_keys.json
	$(BIN)/recommender keys add --file $(DEMO_DIR)/api_keys.json --id demo-officer --role officer > $(DEMO_DIR)/officer.key
	$(BIN)/recommender keys add --file $(DEMO_DIR)/api_keys.json --id demo-admin --role admin > $(DEMO_DIR)/admin.key
	$(BIN)/recommender keys add --file $(DEMO_DIR)/api_keys.json --id demo-analyst --role analyst > $(DEMO_DIR)/analyst.key
	@echo
	@echo "Report: $(DEMO_DIR)/report.json; tier-A offers: $(DEMO_DIR)/offers_tier_A.csv"
	@echo "MLflow UI: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db  (then open http://127.0.0.1:5000)"
	@echo "API docs: http://127.0.0.1:$(DEMO_PORT)/docs   Try (demo officer key):"
	@echo "  curl -s -X POST http://127.0.0.1:$(DEMO_PORT)/v1/recommendations -H 'X-API-Key: $$(cat $(DEMO_DIR)/officer.key)' -H 'content-type: application/json' -d '{\"customer_id\": \"C0000001\", \"k\": 3}'"
	@echo "A/B rehearsal (README, 'A/B experiments'): in another terminal,"
	@echo "  curl -s -X POST http://127.0.0.1:$(DEMO_PORT)/v1/experiments -H 'X-API-Key: '$$(cat $(DEMO_DIR)/admin.key) -H 'content-type: application/json' -d '{\"name\": \"hybrid-vs-popularity\", \"holdout\": 0.1, \"variants\": [{\"name\": \"popularity\", \"policy\": \"popularity\"}, {\"name\": \"champion\"}]}'"
	@echo "  RECOMMENDER_EVENTS_URL=sqlite:///$(CURDIR)/$(DEMO_DIR)/events.db $(BIN)/recommender ab simulate --experiment hybrid-vs-popularity --customers 10000 --data $(DEMO_DIR)/bank --key-file $(DEMO_DIR)/officer.key"
	@echo "Starting the API (Ctrl+C to stop)..."
	RECOMMENDER_DATA_DIR=$(DEMO_DIR)/bank RECOMMENDER_EVENTS_URL=sqlite:///$(CURDIR)/$(DEMO_DIR)/events.db \
	RECOMMENDER_API_KEYS_FILE=$(DEMO_DIR)/api_keys.json RECOMMENDER_POLL_SECONDS=30 \
	RECOMMENDER_RATE_LIMIT_PER_MINUTE=60000 \
	$(BIN)/recommender serve --port $(DEMO_PORT)

lint: $(STAMP)
	$(BIN)/ruff check recommender training serving tests bench
	$(BIN)/ruff format --check recommender training serving tests bench
	$(BIN)/mypy recommender training serving

test: $(STAMP) lint
	$(BIN)/pytest -q

# Known vulnerabilities in the installed dependencies (PyPI's advisory data). --strict:
# a package that could not be checked is a failure, not a silent pass. Exceptions go in
# audit-exceptions.txt, one `--ignore-vuln ID` per line with its justification.
audit: $(STAMP)
	$(BIN)/pip-audit --strict --progress-spinner off --skip-editable $$(grep -o '^--ignore-vuln [A-Za-z0-9-]*' audit-exceptions.txt)

# Regenerate the hashed lock files after changing dependencies in pyproject.toml (needs the
# package index; uv comes with the dev lock). The test suite checks they agree.
lock: $(STAMP)
	$(BIN)/uv pip compile requirements/build.in $(LOCK_FLAGS) -o requirements/build.lock
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) -o requirements/runtime.lock
	$(BIN)/uv pip compile pyproject.toml --extra dev $(LOCK_FLAGS) -o requirements/dev.lock

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

# The container image (deploy/): docker where a daemon answers, else Debian's buildah
# (--isolation chroot); a local stand-in for python:3.11-slim is built first when the
# official image cannot be pulled. `make image-test` smoke-tests the built image.
IMAGE ?= nbo-api
image-tools:
	@if ! command -v docker >/dev/null || ! timeout 10 docker info >/dev/null 2>&1; then \
		missing=""; \
		for t in buildah:buildah podman:podman debootstrap:debootstrap; do \
			command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; \
		done; \
		if [ -n "$$missing" ]; then \
			if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
				apt-get install -y -qq $$missing >/dev/null 2>&1 \
				|| { apt-get update -qq >/dev/null && apt-get install -y -qq $$missing >/dev/null; }; \
			else echo "install$$missing (Debian packages) or a docker daemon" >&2; exit 1; fi; \
		fi; \
	fi

image: image-tools
	IMAGE=$(IMAGE) deploy/build-image.sh

image-test: image
	IMAGE=$(IMAGE) deploy/image-test.sh

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
