# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# The CPU build of torch; an unpinned `torch` would resolve to a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# The first figure, then the whole course executed offline, as HTML in build/course/.
demo: install
	$(PY) -m tipsomaly_lite demo --out build/demo
	$(PY) notebooks/run_course.py --out build/course

# The unit tests, then every notebook top to bottom (nbval, offline; a failed self-check raises).
# pytest's exit code 5 means it collected nothing: a broken suite, reported as a failure.
test: install
	TIPSOMALY_OFFLINE=1 TIPSOMALY_STRICT_CHECKS=1 MPLBACKEND=Agg $(PY) -m pytest -q -p no:cacheprovider \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout=600 --durations=10 tests notebooks; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

clean:
	rm -rf build .pytest_cache
