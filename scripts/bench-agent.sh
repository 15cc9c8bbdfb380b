#!/usr/bin/env bash
# Guest agent benchmarks (docs/benchmarks.md, "Guest agent"):
#   scripts/bench-agent.sh [RUNS]         host<->agent over a Unix socket: exec of `true`, ping,
#                                         and a 100 MiB stdout stream, through voidbox::client
#                                         against the agent binary in `serve` mode (release).
#                                         Logic: tests/bench_agent.rs. Default 200 runs.
#   scripts/bench-agent.sh --lane [RUNS]  the same through voidbox-vmm and vsock in a real guest
#                                         (nested lane on hosts without hardware KVM).
#                                         Logic: tests/agent_lane.rs (bench_agent_lane). Default 50.
# Needs root and a cgroup2 mount.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--lane" ]; then
  export BENCH_RUNS="${2:-50}"
  exec cargo test -q -p voidbox --test agent_lane -- --ignored --nocapture bench_agent_lane
fi
cargo build -q --release -p voidbox-guest-agent
export VOIDBOX_AGENT_BIN="${CARGO_TARGET_DIR:-target}/release/voidbox-guest-agent"
export BENCH_RUNS="${1:-200}"
exec cargo test -q --release -p voidbox --test bench_agent -- --ignored --nocapture bench_agent
