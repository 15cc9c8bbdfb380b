#!/usr/bin/env bash
# One-time machine setup (idempotent, needs root for apt): the Debian packages
# voidbox and its tests use, the musl target for the static guest agent, and the
# guest kernel (Debian's kernel package, downloaded and unpacked, never installed).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

PKGS=(
  qemu-system-x86   # the nested lane (QEMU TCG) and the QEMU microvm peer in benchmarks
  busybox-static    # shell and core tools inside guests
  dpkg cpio kmod xz-utils zstd  # unpacking the kernel package, cross-checks
  e2fsprogs         # mkfs.ext4 / e2fsck / debugfs for rootfs disks
  docker-registry   # a real local OCI registry for the tests (bound to 127.0.0.1 by them)
  skopeo umoci      # test images and the benchmark peer
  debootstrap mmdebstrap  # example images built from Debian packages
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

step "rustup target add x86_64-unknown-linux-musl"
rustup target add x86_64-unknown-linux-musl

# CI type-checks every fuzz target with nightly (scripts/fuzz.sh --check-only); fuzzing
# itself also needs cargo-fuzz, which scripts/fuzz.sh installs when missing.
step "nightly toolchain (fuzz targets)"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal

step "guest kernel (Debian package, unpacked into the kernel store)"
scripts/setup-kernel.sh

# Everything the tests need is fetched here, never inside `cargo test`: the kernel (pinned
# above, its .deb kept in the deb cache), busybox-static for guest images, and the example
# images (Debian packages through debootstrap).
home=${VOIDBOX_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/voidbox}
debs="$home/debs"
if ! ls "$debs"/busybox-static_*.deb >/dev/null 2>&1; then
  step "busybox-static .deb into $debs"
  mkdir -p "$debs"
  (cd "$debs" && apt-get download -q busybox-static)
fi

step "example images (debootstrap; skipped when already built)"
examples/images/build.sh "$PWD/target/example-images" --layouts-only
