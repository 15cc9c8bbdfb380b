#!/usr/bin/env bash
# The test command of the README: formatting, lints, the static guest agent,
# then every test of the workspace (unit, host integration with a real local
# registry and real ext4, host KVM, and the nested-lane end-to-end tests).
# Run scripts/setup.sh once first on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "build: the static guest agent (musl) and the release VMM"
cargo build --profile agent --target x86_64-unknown-linux-musl -p voidbox-guest-agent
cargo build --release -p voidbox-vmm -p voidbox

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test --workspace"
cargo test --workspace -- --test-threads="${VOIDBOX_TEST_THREADS:-2}"
