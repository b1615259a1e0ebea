PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_CUSTOMERS ?= 50000
DEMO_MONTHS ?= 12

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/recommender demo-data $(DEMO_DIR)/bank --customers $(DEMO_CUSTOMERS) --months $(DEMO_MONTHS) --seed 7
	$(BIN)/recommender train $(DEMO_DIR)/bank --report $(DEMO_DIR)/report.json
	$(BIN)/recommender score $(DEMO_DIR)/bank --tier A --out $(DEMO_DIR)/offers_tier_A.csv
	@echo
	@echo "Report: $(DEMO_DIR)/report.json; tier-A offers: $(DEMO_DIR)/offers_tier_A.csv"
	@echo "MLflow UI: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db  (then open http://127.0.0.1:5000)"

lint: $(STAMP)
	$(BIN)/ruff check recommender training serving tests bench
	$(BIN)/ruff format --check recommender training serving tests bench
	$(BIN)/mypy recommender training serving

test: $(STAMP) lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
