#!/usr/bin/env bash
# The test command: installs what is needed (tools/setup.sh), then runs ruff, the Python test
# suite (tiny random models; `-m slow` adds the real-model checks) and, where Swift is
# installed, `swift test` for the ios_bridge package.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/ruff check sharp_mlx tools tests
.venv/bin/python -m pytest -q "$@"
if command -v swift >/dev/null 2>&1 && [[ -f Package.swift ]]; then
    swift test
else
    echo "swift not installed: skipping swift test" >&2
fi
