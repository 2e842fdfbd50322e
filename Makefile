# csfcn: `make demo` and `make test` work on a fresh machine (Python 3.11, no GPU).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow test-gpu gpu-rehearsal mutants lint venv serve-venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install when the package metadata changes. `.[test]` holds every extra (train, tfds, onnx,
# triton) plus the test tools. torch comes from the package registry as pip resolves the range
# in pyproject.toml: on Linux x86_64 that is PyPI's CUDA build (several GB in .venv; it runs on
# CPU too). For a CPU-only wheel, install torch from the PyTorch CPU index into .venv first.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The serving environment (torch_deploy/serving.py): nvidia-pytriton pins numpy<2, which JAX
# refuses, so `csfcn[serve]` gets a venv of its own. Its own site-packages (numpy 1.26, PyTriton
# and its tritonserver, tritonclient) come first; a .pth then adds .venv's, so torch, Triton and
# csfcn itself are shared instead of installed twice (several GB). pip's note that jax wants
# numpy>=2 is about .venv's packages seen through that .pth; JAX never runs here.
SERVE_VENV  ?= .serve-venv
SERVE_PY    := $(SERVE_VENV)/bin/python
SERVE_STAMP := $(SERVE_VENV)/.installed
$(SERVE_STAMP): pyproject.toml $(STAMP)
	rm -rf $(SERVE_VENV)
	$(PYTHON) -m venv $(SERVE_VENV)
	echo "import site; site.addsitedir('$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
		> "$$($(SERVE_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_csfcn_main_venv.pth"
	$(SERVE_PY) -m pip install --quiet -e '.[serve]'
	touch $(SERVE_STAMP)

serve-venv: $(SERVE_STAMP)

# The main job on the embedded synthetic dataset: data, train, evaluate, export, parity,
# predict, pictures and runs/demo/report.md.  Re-running continues an interrupted demo.
# DEMO_FLAGS passes options to python -m tools.demo, e.g. DEMO_FLAGS=--tiny (a quick
# check of every stage) or DEMO_FLAGS=--fresh.
DEMO_FLAGS ?=
demo: $(STAMP)
	$(PY) -m tools.demo $(DEMO_FLAGS)

test: $(STAMP) $(SERVE_STAMP)
	$(PY) -m ruff check .
	CSFCN_SERVE_PYTHON=$(abspath $(SERVE_PY)) TRITON_INTERPRET=1 $(PY) -m pytest -q -n 2 --dist worksteal -m 'not slow and not gpu'

test-slow: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m slow

# The GPU machine's first run, rehearsed on CPU in an environment built like its image
# (docs/gpu_readiness.md): the step before any GPU call. Not part of `make test` (several GB).
gpu-rehearsal:
	.ci/gpu_rehearsal

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu

# Realistic one-line bugs put in one at a time (.ci/mutants.toml); each must fail its tests.
# Not part of `make test` (about 10 minutes).
mutants: $(STAMP)
	$(PY) .ci/mutation_check.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) $(SERVE_VENV) runs data/synthetic data/synthetic_tiny .pytest_cache .ruff_cache
