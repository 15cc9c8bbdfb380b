#!/bin/sh
# Builds the example images from Debian packages and imports them into the
# voidbox store (no public registry is needed):
#   toolchain  debootstrap minbase + gcc, libc6-dev, make   (examples/ci-build.yaml)
#   python     debootstrap minbase + python3                  (examples/agent-tool.yaml)
#   text-tools examples/skills/text-tools as a one-layer image (examples/skills.yaml)
# Usage: examples/images/build.sh [OUT_DIR] [VOIDBOX | --layouts-only]
# OUT_DIR defaults to target/example-images (where the specs look); VOIDBOX
# to target/debug/voidbox. Needs root, debootstrap and umoci; reruns skip
# layouts that exist. --layouts-only builds the layouts without importing them
# (scripts/setup.sh); VOIDBOX_EXAMPLES_OFFLINE=1 refuses to build a missing
# layout (the tests: nothing is downloaded inside `cargo test`).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/target/example-images}
voidbox=${2:-$repo/target/debug/voidbox}
suite=${VOIDBOX_EXAMPLE_SUITE:-bookworm}
mirror=${VOIDBOX_EXAMPLE_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$out"
work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

# layout_from_rootfs NAME TAG ROOTFS: a one-layer OCI layout from a directory.
layout_from_rootfs() {
    name=$1 tag=$2 rootfs=$3
    layout="$out/$name"
    rm -rf "$layout" "$work/bundle"
    umoci init --layout "$layout.tmp"
    umoci new --image "$layout.tmp:$tag"
    umoci unpack --image "$layout.tmp:$tag" "$work/bundle"
    cp -a "$rootfs/." "$work/bundle/rootfs/"
    umoci repack --image "$layout.tmp:$tag" "$work/bundle"
    umoci config --image "$layout.tmp:$tag" --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    umoci gc --layout "$layout.tmp"
    mv "$layout.tmp" "$layout"
    rm -rf "$work/bundle"
}

debian_image() {
    name=$1 packages=$2
    [ -d "$out/$name" ] && { echo "$name: exists"; return; }
    if [ "${VOIDBOX_EXAMPLES_OFFLINE:-0}" = 1 ]; then
        echo "example image $name is missing from $out: run scripts/setup.sh first" >&2
        exit 1
    fi
    echo "$name: debootstrap $suite with $packages"
    debootstrap --variant=minbase --include="$packages" "$suite" "$work/$name" "$mirror" >"$work/$name.log" 2>&1 \
        || { tail -20 "$work/$name.log"; exit 1; }
    rm -rf "$work/$name/var/cache/apt/archives/"*.deb "$work/$name/var/lib/apt/lists/"*
    layout_from_rootfs "$name" "$suite" "$work/$name"
}

debian_image toolchain gcc,libc6-dev,make
debian_image python python3
if [ ! -d "$out/text-tools" ]; then
    mkdir -p "$work/text-tools"
    cp -a "$repo/examples/skills/text-tools/." "$work/text-tools/"
    # An image's modes are its author's choice, not the checkout's umask: the
    # workload runs as an unprivileged user and must be able to run these.
    chmod -R u+rwX,go+rX,go-w "$work/text-tools"
    layout_from_rootfs text-tools v1 "$work/text-tools"
fi
[ "$voidbox" = --layouts-only ] && exit 0
for ref in "oci:$out/toolchain:$suite" "oci:$out/python:$suite" "oci:$out/text-tools:v1"; do
    "$voidbox" image pull "$ref"
done
