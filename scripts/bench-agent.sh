#!/usr/bin/env bash
# Guest agent round trips host<->agent over a Unix socket: exec of `true` (and ping),
# and a 100 MiB stdout stream, through voidbox::client against the agent binary in
# `serve` mode (release builds). The logic is in tests/bench_agent.rs. Needs root
# and a cgroup2 mount.   scripts/bench-agent.sh [RUNS]   (default 200 `true` execs)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p voidbox-guest-agent
export VOIDBOX_AGENT_BIN="${CARGO_TARGET_DIR:-target}/release/voidbox-guest-agent"
export BENCH_RUNS="${1:-200}"
exec cargo test -q --release -p voidbox --test bench_agent -- --ignored --nocapture bench_agent
