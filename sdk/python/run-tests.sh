#!/usr/bin/env bash
# Runs the Python SDK's tests against a real `voidbox serve` (started by the tests).
#
#   VOIDBOX_BIN=target/release/voidbox sdk/python/run-tests.sh [VENV] [pytest args...]
#
# VENV (default: target/sdk-venv under the repository root) is created if missing;
# the SDK is installed there (editable, with its test extras) before every run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if [[ -z "${VOIDBOX_BIN:-}" ]]; then
    echo "run-tests.sh: set VOIDBOX_BIN to the voidbox binary (e.g. VOIDBOX_BIN=target/release/voidbox)" >&2
    exit 2
fi
case "$VOIDBOX_BIN" in
    /*) ;;
    *) VOIDBOX_BIN="$PWD/$VOIDBOX_BIN" ;;
esac
if [[ ! -x "$VOIDBOX_BIN" ]]; then
    echo "run-tests.sh: VOIDBOX_BIN=$VOIDBOX_BIN is not an executable file" >&2
    exit 2
fi
export VOIDBOX_BIN

venv="$root/target/sdk-venv"
if [[ $# -gt 0 && "$1" != -* ]]; then
    venv="$1"
    shift
fi
case "$venv" in
    /*) ;;
    *) venv="$PWD/$venv" ;;
esac

python="${PYTHON:-python3}"
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$here[test]"

cd "$here"
exec "$venv/bin/python" -m pytest -q tests "$@"
