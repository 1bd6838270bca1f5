#!/usr/bin/env bash
# The main job on a fresh machine: installs dispy into .venv, starts a local dispynode on 127.0.0.1 and
# runs a real computation on it, printing progress and the result. Usage: ./run_demo.sh [--jobs N]
set -euo pipefail
cd "$(dirname "$0")"
. scripts/find_python.sh
PY=$(find_python 3.11 || find_python 3.12 || find_python 3.13 || command -v python3)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv/bin/python -m pip install -q -e .
exec .venv/bin/dispy demo "$@"
