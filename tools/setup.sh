#!/usr/bin/env bash
# Installs everything sharp-mlx needs on a fresh machine: Debian's OpenBLAS (Linux only, for a
# ~30x faster CPU matmul in MLX), then a virtual environment in .venv with the package and its
# dev tools. Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "$(uname -s)" == "Linux" ]] && ! ldconfig -p 2>/dev/null | grep -q 'libopenblas.so.0'; then
    SUDO=""
    [[ "$(id -u)" == "0" ]] || SUDO="sudo"
    echo "setup: installing libopenblas0-pthread" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libopenblas0-pthread >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv" >&2
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import sharp_mlx, pytest, ruff" 2>/dev/null \
   || [[ pyproject.toml -nt .venv/.sharp-installed ]]; then
    echo "setup: installing sharp-mlx and its dependencies into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[dev]"
    touch .venv/.sharp-installed
fi
