#!/usr/bin/env bash
# Cold pull + rootfs disk build vs skopeo+umoci+mkfs.ext4, and warm resolution (docs/benchmarks.md).
# Needs root, docker-registry, skopeo, umoci, e2fsprogs. The logic lives in oci/examples/bench_oci.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release -q -p voidbox-oci --example bench_oci "$@"
