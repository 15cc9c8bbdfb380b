#!/usr/bin/env bash
# Newcomer's first command: installs the prerequisites, builds voidbox, makes the
# default guest image (Debian kernel + initramfs with the static agent) and runs
# examples/hello.yaml in a real microVM. On a host whose KVM cannot boot stock
# kernels (PVM, no KVM at all) the VM runs through the nested lane, and voidbox
# says so once on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

scripts/setup.sh

step "build voidbox, voidbox-vmm and the static guest agent"
cargo build --release -p voidbox -p voidbox-vmm
cargo build --profile agent --target x86_64-unknown-linux-musl -p voidbox-guest-agent

step "voidbox guest build (the default guest image, into the local store)"
target/release/voidbox guest build

step "voidbox run --file examples/hello.yaml"
target/release/voidbox run --file examples/hello.yaml
