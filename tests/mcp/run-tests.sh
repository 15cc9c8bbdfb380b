#!/usr/bin/env bash
# Runs the MCP tests (tests/mcp) with the official Python MCP client, in a venv.
#
#   VOIDBOX_BIN=target/debug/voidbox tests/mcp/run-tests.sh [VENV_DIR] [PYTEST_ARGS...]
#
# VENV_DIR defaults to target/mcp-venv (made if missing); an argument starting
# with `-` is taken for pytest, e.g. `-k test_tools_without_vms` (boots no VM).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/target/mcp-venv"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    venv="$1"
    shift
fi
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$here" "$@"
