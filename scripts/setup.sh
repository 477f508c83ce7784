#!/usr/bin/env bash
# Create .venv with ifguide and its pinned dependencies. Safe to re-run.
#
# CPU machines (default): torch 2.13.0 CPU build, then kronfluence with --no-deps. kronfluence's
# metadata declares torchvision, which it never imports, and PyPI's torchvision next to a CPU
# torch breaks `transformers` imports; so its real runtime deps come from ifguide's pyproject.
# GPU users: IFGUIDE_TORCH="torch==2.14.1" bash scripts/setup.sh (or any CUDA build you run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
TORCH_SPEC="${IFGUIDE_TORCH:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade "pip>=24"
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet -e ".[dev]" -c scripts/constraints.txt
.venv/bin/python -m pip install --quiet --no-deps "kronfluence==1.0.1"
.venv/bin/python -c "import ifguide, kronfluence, transformers, torch; print('ifguide ready: torch', torch.__version__, '| transformers', transformers.__version__)"
