# coldkeep — `make test` and `make demo` each work on a fresh machine: they create .venv,
# install coldkeep with everything it needs, and install missing system packages (as root).
# Prefer the system Python: PostgreSQL runs `coldkeep pg wal-push` as its own OS user, which
# cannot execute an interpreter under a private home (e.g. pyenv in /root).
PYTHON ?= $(firstword $(wildcard /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11) python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo lint typecheck check sysdeps venv bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "coldkeep needs Python 3.11+")'
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); python3 -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

sysdeps:
	@bash scripts/ensure-system-deps.sh

test: sysdeps $(STAMP)
	$(BIN)/pytest -n 2 --dist loadfile -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports --no-cache --no-logo  # import direction: [tool.importlinter] in pyproject.toml

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

demo: sysdeps $(STAMP)
	$(BIN)/python scripts/demo.py

bench: sysdeps $(STAMP)
	bash bench/run_all.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-run
