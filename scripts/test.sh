#!/usr/bin/env bash
# The test command of the README: formatting, lints, then every test of the
# workspace: unit tests, host integration (a real local registry, real ext4
# checked by e2fsck, the agent as PID 1 in a namespace), small payloads on the
# host's KVM, and the end-to-end tests that boot the stock Debian kernel with
# voidbox-vmm, directly on hardware KVM or through the nested lane.
# Run scripts/setup.sh once first on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each part is timed; the summary at the end (also on failure) says where the time went.
TIMES=()
PART=""
PART_START=$SECONDS
end_part() {
  [ -n "$PART" ] && TIMES+=("$(printf '%5ds  %s' $((SECONDS - PART_START)) "$PART")")
  PART=""
}
step() {
  end_part
  PART="$*"
  PART_START=$SECONDS
  printf '\n==> %s\n' "$*"
}
TEST_LOG=""
summary() {
  end_part
  printf '\n==> time per part (total %ds)\n' "$SECONDS"
  printf '%s\n' "${TIMES[@]}"
  if [ -n "$TEST_LOG" ] && [ -f "$TEST_LOG" ]; then
    printf '\n==> time per test binary (seconds)\n'
    awk '/^ *Running /{name=$2} /^ *Doc-tests /{name="doc-tests " $2} /^test result:/{for(i=1;i<=NF;i++) if($i=="in"){t=$(i+1); sub("s$","",t); printf "%8s  %s\n", t, name}}' "$TEST_LOG" | sort -rn
    rm -f "$TEST_LOG"
  fi
}
trap summary EXIT
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
# What tests that drop to uid 65534 depend on, for reading a failed run.
printf 'uid %s, umask %s, TMPDIR %s, checkout %s\n' "$(id -u)" "$(umask)" "${TMPDIR:-unset}" "$PWD"

step "cargo fmt --check"
cargo fmt --all -- --check

step "build: release VMM and CLI, static (musl) guest agent and test probe"
cargo build --release -p voidbox-vmm -p voidbox
cargo build --profile agent --target x86_64-unknown-linux-musl -p voidbox-guest-agent
cargo build --release --target x86_64-unknown-linux-musl -p voidbox-guest-probe
export VOIDBOX_VMM_BIN=$TARGET/release/voidbox-vmm
export VOIDBOX_PROBE_BIN=$TARGET/x86_64-unknown-linux-musl/release/voidbox-guest-probe
export VOIDBOX_AGENT_MUSL_BIN=$TARGET/x86_64-unknown-linux-musl/agent/voidbox-guest-agent

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# Every cargo-fuzz target must keep compiling (their replay tests run below). A cold
# sanitizer build of all six fuzz crates takes far longer than this check (see README).
step "fuzz targets: scripts/fuzz.sh --check-only"
scripts/fuzz.sh --check-only

step "cargo test --workspace"
TEST_LOG=$(mktemp)
cargo test --workspace --no-fail-fast -- --test-threads="${VOIDBOX_TEST_THREADS:-2}" 2>&1 | tee "$TEST_LOG"

# The Python SDK (sdk/python) and the MCP server (tests/mcp, official Python MCP
# client) against real daemons booting real VMs, one lane at a time, in a home of
# their own with the guest image built from this tree.
step "Python SDK and MCP tests (real VMs)"
export VOIDBOX_BIN=$TARGET/release/voidbox
export VOIDBOX_DEB_CACHE=${VOIDBOX_DEB_CACHE:-${VOIDBOX_HOME:-$HOME/.cache/voidbox}/debs}
export VOIDBOX_HOME=$TARGET/py-home
mkdir -p "$VOIDBOX_HOME"
"$VOIDBOX_BIN" guest build
sdk/python/run-tests.sh "$TARGET/sdk-venv"
tests/mcp/run-tests.sh "$TARGET/mcp-venv"
