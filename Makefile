# The operator's entry points. Everything runs from the project's own virtualenv (.venv),
# created on first use from requirements.txt pinned by constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint bench-recommend bench-serve-memory bench-gateway bench-capacity bench-ingest bench-train bench-train-scale bench-quality release-token release-status release-drill up down status demo simulate clean

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

# What a model of 20M ratings costs the recommend function (random factors of a trained model's
# shapes through the real writer and registry, no training): peak RSS, load time and p50/p99 of a
# fresh replica against its stack.yml memory limit; writes bench/results/serve_memory.json.
# Another size: `make bench-serve-memory ARGS="--ratings 4000000"`.
bench-serve-memory: $(STAMP)
	$(PY) -m bench.serve_memory $(ARGS)

# Ingest throughput vs raw kafka-python consumption on a local Tansu; writes bench/results/ingest.json.
bench-ingest: $(STAMP)
	$(PY) -m bench.ingest

# Training end to end vs a bare surprise fit (1M synthetic ratings), and register -> canary serving
# on a throwaway local runtime (free ports); writes bench/results/train.json.
bench-train: $(STAMP)
	$(PY) -m bench.train

# The train job and a bare scikit-surprise fit, each in its own process, at 1M, 4M and 10M ratings
# (production parameters): wall, CPU, peak RSS, slopes, where the function's limits are reached;
# writes bench/results/train_scale.json. Quick: ARGS="--sizes 0.25M,1M"; 20M: ARGS="--with-20m".
bench-train-scale: $(STAMP)
	$(PY) -m bench.train_scale $(ARGS)

# The token that guards the release function's manual actions (promote/rollback/abort):
# generated once, never a default. `make up` needs it (stack.yml lists it as a secret).
release-token:
	@mkdir -p var/secrets && chmod 700 var/secrets
	@test -s var/secrets/release-admin-token || \
	  (umask 077 && $(PYTHON) -c "import secrets; print(secrets.token_urlsafe(32))" > var/secrets/release-admin-token)
	@echo "release-admin-token in var/secrets/release-admin-token"

# Top-20 quality on the production path (ingest batches -> snapshot -> the train job's split, fit,
# evaluation, gates, registration): the model vs popularity vs random, RMSE vs the noise floor,
# seen violations, recommend p99; writes bench/results/quality.json. On your own data (a file of
# stream lines): `make bench-quality ARGS="--stream lines.txt --out bench/results/quality-mine.json"`.
bench-quality: $(STAMP)
	$(PY) -m bench.quality $(ARGS)

# The local stack on 127.0.0.1 (broker, localfaas gateway :8080, nginx :8082, Prometheus :9090,
# Pushgateway :9091): started in the background by PID, logs in var/logs/. See scripts/stack/ and env/local.yml.
up: $(STAMP) release-token
	$(PY) -m scripts.stack up

status: $(STAMP)
	@$(PY) -m scripts.stack status

down: $(STAMP)
	$(PY) -m scripts.stack down

# p50/p99 of GET /recommend/<uid> direct vs through the gateway vs through nginx (brings up its own
# localfaas + nginx on free ports); writes bench/results/gateway.json.
bench-gateway: $(STAMP)
	$(PY) -m bench.gateway

# Capacity (highest open-loop rate with p99 <= 50 ms, 0 errors) direct / through the gateway / through
# nginx, against a Flask app under gunicorn (2 sync workers, bench/baseline/, not shipped) in the same
# run, with CPU ms per request per process; writes bench/results/capacity.json. Installs the
# baseline's gunicorn (bench/baseline/requirements.txt) into .venv first.
bench-capacity: $(STAMP)
	@$(VENV)/bin/pip install --disable-pip-version-check -q -r bench/baseline/requirements.txt -c constraints.txt
	@command -v nginx >/dev/null || { echo "bench-capacity needs nginx: apt-get install -y nginx"; exit 1; }
	$(PY) -m bench.capacity $(ARGS)

# The whole lifecycle, compressed into a few minutes on its own stack (free ports, temp state dir):
# backfill, ingest, first model -> stable, second -> canary -> promoted, a drill model -> rolled back,
# a replica killed under load; prints each phase and writes var/demo/report.{md,json,png}.
# ARGS passes flags, e.g. `make demo ARGS="--attach"` to drive the running `make up` stack instead.
demo: $(STAMP)
	$(PY) -m scripts.demo $(ARGS)

# Release operator actions on the running stack (scripts/release.py; also promote, rollback, abort,
# step, train, ingest: `.venv/bin/python -m scripts.release --help`). The drill releases a deliberately
# slow/erroring copy of the stable model to the canary, e.g. ARGS="--error-rate 0.5".
release-status: $(STAMP)
	@$(PY) -m scripts.release status

release-drill: $(STAMP)
	$(PY) -m scripts.release drill-bad-model $(ARGS)

# The stream simulator against the running stack (broker :9092, public entry :8082). Bounded by
# default (60 s); ARGS passes flags, e.g. `make simulate ARGS="--duration 0 --rate 50 --backfill 20000"`.
simulate: $(STAMP)
	$(PY) -m scripts.simulator $(ARGS)

clean:
	rm -rf build .pytest_cache
