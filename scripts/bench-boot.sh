#!/usr/bin/env bash
# Boot benchmark: voidbox-vmm vs QEMU microvm, same kernel + initramfs, boot to a marker,
# interleaved runs, medians, ratio and VMM memory overhead. Runs inside the nested lane on
# hosts without hardware KVM. The logic is in tests/bench_boot.rs.
#   scripts/bench-boot.sh [RUNS]      (default 10 runs per VMM)
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_RUNS="${1:-10}"
exec cargo test -p voidbox --test bench_boot -- --ignored --nocapture bench_boot
