#!/usr/bin/env bash
# Fetches Debian's amd64 kernel package into the kernel store ($VOIDBOX_HOME/kernels, default
# ~/.cache/voidbox/kernels): apt-get download (never installed), sha256 recorded, unpacked,
# ELF vmlinux extracted. Idempotent. VOIDBOX_DEB_CACHE=DIR[:DIR] reuses .debs found there.
#   scripts/setup-kernel.sh [PATH.deb]
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run -q -p voidbox-guest-image --example fetch-kernel -- "$@"
