# The two commands of the README live here: `make neural-fit` and `make test`.
# Both create the virtualenv and install the project first; the install is redone only when
# pyproject.toml changes.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)

.PHONY: setup test neural-fit serve stop ui

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

test: setup
	$(PY) -m pytest -q

# Start (or reuse) the local Prefect server and the served deployments, run neural-fit/default, print
# where its report is. Pids, ports and logs: ./work/.
neural-fit: setup
	VENV=$(abspath $(VENV)) scripts/neural-fit.sh

# Only start (or reuse) the Prefect server and the deployment server.
serve: setup
	VENV=$(abspath $(VENV)) scripts/start.sh

# Stop exactly what `make serve` / `make neural-fit` started (deployment server first, then the server).
stop:
	VENV=$(abspath $(VENV)) scripts/stop.sh

# Print the Prefect UI address.
ui:
	@VENV=$(abspath $(VENV)) scripts/ui.sh
