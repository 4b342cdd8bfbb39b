# Every entry point creates or reuses .venv from the pinned dependencies in pyproject.toml,
# so a fresh clone needs nothing but Python 3.11+ and access to PyPI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 3000
SPEED  ?= 1
SEED   ?= 7
CONTACTS ?= 200

.PHONY: demo serve test lint browser spamassassin funnels openapi bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/funnelpilot demo --seed $(SEED) --contacts $(CONTACTS)

serve: $(STAMP)
	$(BIN)/funnelpilot serve --port $(PORT) --speed $(SPEED) $(if $(FRESH),--fresh)

# One pytest worker per core (pytest-xdist); each test gets the next idle worker (worksteal:
# the few long tests do not hold up a worker's queue). JOBS=0 runs in this process.
JOBS ?= auto
# make lint runs beside the tests (its output follows theirs): both must pass.
test: $(STAMP) browser
	@mkdir -p .local; $(MAKE) --no-print-directory lint > .local/lint.out 2>&1 & lint=$$!; \
	$(BIN)/python -m pytest -n $(JOBS) --dist worksteal; tests=$$?; \
	wait $$lint; linted=$$?; cat .local/lint.out; \
	[ $$linted = 0 ] || echo "make test: make lint failed"; [ $$tests = 0 ] && [ $$linted = 0 ]

# tests/test_browser.py drives Debian's Chromium. When it is missing and we are root with
# apt-get (CI, a fresh machine), install it; otherwise that one test is skipped with the reason.
browser:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: /usr/bin/chromium is missing (apt-get install chromium): the browser test is skipped"

# cfn-lint with its informational rules too (I*: e.g. explicit DeletionPolicy on stateful resources).
# `sam validate --lint` would run the same linter again with fewer rules (samcli/commands/validate:
# cfnlint.api.lint with the default rules and the region), about as long again for nothing.
lint: $(STAMP)
	$(BIN)/cfn-lint --include-checks I -- template.yaml

funnels: $(STAMP)
	$(BIN)/funnelpilot funnels

openapi: $(STAMP)
	$(BIN)/funnelpilot openapi

bench: $(STAMP) spamassassin
	$(BIN)/python bench/run.py --check-determinism

# bench/spam_scores.py scores every shipped email with SpamAssassin (Debian's package, run offline).
# When it is missing and we are root with apt-get, install it; otherwise that section says why it is empty.
spamassassin:
	@command -v spamassassin >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq spamassassin >/dev/null; } \
	  || echo "note: spamassassin is missing (apt-get install spamassassin): bench/RESULTS.md has no spam scores"

clean:
	rm -rf .local .aws-sam .pytest_cache
