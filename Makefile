# The operator's entry points. Everything runs from the project's own virtualenv (.venv),
# created on first use from requirements.txt pinned by constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint bench-recommend bench-gateway bench-ingest bench-train up down status demo clean

$(STAMP): requirements.txt constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing Python dependencies into $(VENV) (pinned by constraints.txt)..."
	$(VENV)/bin/pip install --disable-pip-version-check -q -r requirements.txt -c constraints.txt
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench-recommend: $(STAMP)
	$(PY) -m bench.recommend

clean:
	rm -rf build .pytest_cache
