# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# The CPU build of torch; an unpinned `torch` would resolve to a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
# What `make test` takes after the install, measured on this project's 2-core CI machine.
TEST_MINUTES = 5

.PHONY: demo test test-all install clean test-pythons

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev,course,export,app]"
	touch $@

install: $(VENV)/.installed

# The first figure, then the whole course executed offline, as HTML in build/course/.
demo: install
	$(PY) -m tipsomaly_lite demo --out build/demo
	$(PY) notebooks/run_course.py --out build/course

# Two lanes. `make test` (the fast lane, about $(TEST_MINUTES) min on 2 quiet cores): the unit tests without the
# slow rehearsals (two processes, one test file each at a time), then every notebook top to bottom (nbval,
# offline, in one process: the notebooks share the course's trained prompts; a failed self-check raises).
# `make test-all` (the full lane, what CI runs): the same plus the slow rehearsals (real-mode notebooks,
# torchrun, full-size equivalence, benchmark smokes: tests marked `slow`).
# Interactive cells draw once with their defaults (TIPSOMALY_WIDGETS=static).
# pytest's exit code 5 means it collected nothing: a broken suite, reported as a failure.
TEST_ENV = TIPSOMALY_OFFLINE=1 TIPSOMALY_STRICT_CHECKS=1 TIPSOMALY_WIDGETS=static MPLBACKEND=Agg
TEST_WORKERS ?= 2
define run_tests
	$(TEST_ENV) $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=10 \
	  -m "$(1)" tests; \
	rc1=$$?; \
	$(TEST_ENV) $(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env --nbval-cell-timeout=600 \
	  --durations=5 notebooks; \
	rc2=$$?; \
	for rc in $$rc1 $$rc2; do if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; done; \
	if [ $$rc1 -ne 0 ] || [ $$rc2 -ne 0 ]; then exit 1; fi
endef
test: install
	@echo "make test: the fast lane: unit tests (not the slow rehearsals), then the 10 notebooks offline; about $(TEST_MINUTES) min on 2 cores"
	$(call run_tests,not slow)

test-all: install
	@echo "make test-all: the full lane: every unit test (slow rehearsals too), then the 10 notebooks offline"
	$(call run_tests,slow or not slow)

clean:
	rm -rf build .pytest_cache

.PHONY: lab student
# Open the course as a learner does, in JupyterLab (the `course` extra) with live widgets: the student
# copies (exercises as stubs) in lab/, written when missing and never overwritten (they hold your work).
# As root (Docker, many cloud notebooks) JupyterLab needs --allow-root: given, and said.
LAB_DIR ?= lab
LAB_USER_ID ?= $(shell id -u)
LAB_ROOT_FLAG = $(if $(filter 0,$(LAB_USER_ID)),--allow-root,)
lab: install
	$(PY) notebooks/make_student_copies.py --out $(LAB_DIR) --keep-existing
	@$(if $(LAB_ROOT_FLAG),echo "make lab: running as root (as in Docker and many cloud notebooks): JupyterLab starts with --allow-root",:)
	$(VENV)/bin/jupyter lab $(LAB_ROOT_FLAG) $(LAB_DIR)/

# The teacher's hand-out: the student notebooks (solutions replaced by stubs) refreshed in notebooks/student/
# (committed: the student Colab badges open them), and their HTML, executed offline, without solutions, in
# build/student/html/ (index.html: the learning path).
student: install
	$(PY) notebooks/make_student_copies.py --out notebooks/student
	$(PY) notebooks/run_course.py --student --out build/student/html

# Opt-in, not part of `make test`: every Python that pyproject.toml declares and this machine has
# (python3.X on PATH or under pyenv) gets a throwaway venv in build/pythons/3.X/, installed as
# `make install` does, then the unit tests and notebook 03 run offline there; prints a table.
# Slow: torch is installed per version (from PyPI, a CUDA build, where no CPU wheel is at hand).
# TEST_PYTHONS_ARGS, e.g. "--versions 3.12 --timeout 60 --reuse" (`.ci/test_pythons.py --help`).
TEST_PYTHONS_ARGS ?=
test-pythons:
	$(PYTHON) .ci/test_pythons.py --torch-spec "$(TORCH_PIN)" $(TEST_PYTHONS_ARGS)
