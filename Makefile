# The two commands: `make run` and `make test`. Everything installs project-locally.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CLAUDE_VERSION := 2.1.331
CLAUDE_DIR := .tools/claude
CLAUDE_LOCAL := $(CLAUDE_DIR)/node_modules/.bin/claude
# The other agents' CLIs (agent.kind = "codex" / "gemini"), pinned and project-local too.
CODEX_VERSION := 0.171.0
CODEX_LOCAL := .tools/codex/node_modules/.bin/codex
GEMINI_VERSION := 0.61.0
GEMINI_LOCAL := .tools/gemini/node_modules/.bin/gemini
AGENT_PATH := $(CURDIR)/$(CLAUDE_DIR)/node_modules/.bin:$(CURDIR)/.tools/codex/node_modules/.bin:$(CURDIR)/.tools/gemini/node_modules/.bin
ARGS ?=

.PHONY: run test test-fast lint bench clean codex gemini

## run: install the project (and the claude CLI if none is on PATH), then `concordia run`
run: $(VENV)/.run-installed
	@command -v claude >/dev/null 2>&1 || $(MAKE) --no-print-directory $(CLAUDE_LOCAL)
	PATH="$(AGENT_PATH):$$PATH" $(BIN)/concordia run $(ARGS)

## codex, gemini: install that agent's pinned CLI project-locally (`make run` then finds it)
codex: $(CODEX_LOCAL)
gemini: $(GEMINI_LOCAL)

# Most tests wait on subprocesses and sockets, not the CPU: four workers (pytest-xdist), an idle
# one taking tests queued for another (worksteal), so no worker is left with a long tail.
PYTEST_WORKERS ?= 4

## test: install what the tests need (the pinned agent CLIs included) and run the whole suite
test: $(VENV)/.dev-installed $(CLAUDE_LOCAL) $(CODEX_LOCAL) $(GEMINI_LOCAL)
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist worksteal

## test-fast: the suite without the real agent CLIs (their marks), for the edit-test loop
test-fast: $(VENV)/.dev-installed
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist worksteal -m "not claude and not codex and not gemini"

## lint: format check, lint and strict types, as CI runs them
lint: $(VENV)/.dev-installed
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

## bench: print the benchmark figures (see bench/)
bench: $(VENV)/.dev-installed $(CLAUDE_LOCAL) $(CODEX_LOCAL) $(GEMINI_LOCAL)
	$(BIN)/python -m bench.overhead
	$(BIN)/python -m bench.overhead --agent codex
	$(BIN)/python -m bench.overhead --agent gemini
	$(BIN)/python -m bench.overhead --agent repl --prompts 10
	$(BIN)/python -m bench.intake
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.discord_stream
	$(BIN)/python -m bench.merge --data tests/data/merge.jsonl
	$(BIN)/python -m bench.web
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.soak

$(VENV)/bin/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is needed")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.run-installed

# The pinned CLI, project-local. Its native binary ships inside an npm package: no download.
$(CLAUDE_LOCAL):
	@command -v npm >/dev/null 2>&1 || { echo "npm is needed to install the claude CLI (install Node.js 18+)"; exit 1; }
	npm install --prefix $(CLAUDE_DIR) --no-audit --no-fund --loglevel=error @anthropic-ai/claude-code@$(CLAUDE_VERSION)
	$(CLAUDE_LOCAL) --version

$(CODEX_LOCAL):
	@command -v npm >/dev/null 2>&1 || { echo "npm is needed to install the codex CLI (install Node.js 18+)"; exit 1; }
	npm install --prefix .tools/codex --no-audit --no-fund --loglevel=error @openai/codex@$(CODEX_VERSION)
	$(CODEX_LOCAL) --version

$(GEMINI_LOCAL):
	@command -v npm >/dev/null 2>&1 || { echo "npm is needed to install the gemini CLI (install Node.js 20+)"; exit 1; }
	npm install --prefix .tools/gemini --no-audit --no-fund --loglevel=error @google/gemini-cli@$(GEMINI_VERSION)
	$(GEMINI_LOCAL) --version

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
