# Every target sets up what it needs: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
EXTRAS := train,eval,k8s,demo,dev

.PHONY: setup tools test demo smoke images bench clean

setup: $(VENV)/.installed

# Re-installs when the pins change. DS_BUILD_OPS=0: DeepSpeed's CUDA ops are built in the GPU image,
# never here.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

# Real Prometheus parts for the tests, from Debian: the Pushgateway (and promtool for rule checks).
tools:
	@command -v prometheus-pushgateway >/dev/null && command -v promtool >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-pushgateway prometheus >/dev/null; }

test: setup tools
	$(PY) -m pytest -q

# The trainer's smoke recipe end to end: builds the tiny model and scenes on first use.
smoke: setup
	$(PY) -m r1v_job --config recipes/smoke_cpu.yaml

demo: smoke

clean:
	rm -rf runs .pytest_cache
