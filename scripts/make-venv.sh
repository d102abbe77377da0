#!/usr/bin/env bash
# Create (or repair) ./.venv and install Shoal with its test tools (shared by setup.sh and .ci/run).
# Skips pip when pyproject.toml has not changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."

py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "Shoal needs Python >= 3.11 ($py is $("$py" --version 2>&1 || echo missing)); set PYTHON=..." >&2
  exit 1
fi
if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "creating .venv with $("$py" --version)"
  rm -rf .venv
  "$py" -m venv .venv
fi
stamp=.venv/.shoal-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c 'import shoal' 2>/dev/null; then
  echo "installing shoal and its test tools into .venv"
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  # (pip warns about every index path of a site config that does not exist here: noise, dropped)
  .venv/bin/python -m pip install -q -e '.[test]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
  echo "$want" >"$stamp"
else
  echo ".venv is up to date"
fi
