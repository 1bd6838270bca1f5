#!/usr/bin/env bash
# Runs every check CI runs: installs what the tests need into .venv (and a venv per other Python for
# the cross-version tests), then ruff, mypy and pytest. Usage: ./run_tests.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")"
. scripts/find_python.sh

PY=$(find_python 3.11 || find_python 3.12 || find_python 3.13 || command -v python3)
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install -q -e ".[test,docs]"   # docs: tests/integration/test_docs_build.py
for plugin in contrib/*/; do
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$plugin"
done

# Nodes on the other Pythons, so a client on one version is tested against a node on another.
others=()
for version in 3.11 3.12 3.13; do
  other=$(find_python "$version" || true)
  [ -n "$other" ] || continue
  "$other" -c 'import sys; sys.exit(0 if sys.version_info[:2] == tuple(int(p) for p in "'"$version"'".split(".")) else 1)' || continue
  if [ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$version" ]; then
    continue
  fi
  ovenv=".venv-$version"
  [ -x "$ovenv/bin/python" ] || "$other" -m venv "$ovenv"
  "$ovenv/bin/python" -m pip install -q --upgrade pip setuptools wheel
  "$ovenv/bin/python" -m pip install -q -e ".[test]"
  for plugin in contrib/*/; do
    "$ovenv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$plugin"
  done
  others+=("$PWD/$ovenv/bin/python")
done
export DISPY_TEST_OTHER_PYTHONS="$(IFS=,; echo "${others[*]:-}")"
echo "other Pythons for cross-version tests: ${DISPY_TEST_OTHER_PYTHONS:-none}"

"$VENV/bin/ruff" check dispy dispy_core plugins tests bench contrib examples scripts
"$VENV/bin/mypy"
"$VENV/bin/python" -m pytest "$@"

# The unit and conformance tests on the other Pythons too (the integration tests above already run
# nodes on them): what broke the original on each new Python shows up here. They need no network and no
# timing, so the Pythons run side by side (one per core); each one's output is shown whole when it ends.
pids=() logs=()
for other in "${others[@]:-}"; do
  [ -n "$other" ] || continue
  log=$(mktemp)
  DISPY_HYPOTHESIS_PROFILE=other-python "$other" -m pytest -q -p no:cacheprovider tests/unit tests/conformance \
    >"$log" 2>&1 &
  pids+=($!) logs+=("$log")
done
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || status=1
  echo "unit and conformance tests on $("${others[$i]}" --version)"
  cat "${logs[$i]}"
  rm -f "${logs[$i]}"
done
exit $status
