#!/usr/bin/env bash
# Build a local stand-in for the slim Python 3.11 base image, for machines that cannot pull images but reach a
# Debian mirror: Debian bookworm (minbase) with its python3 (3.11) and python3-venv, imported into podman.
#   deploy/base-image.sh [IMAGE]        (default localhost/seqserve-base:bookworm-python3.11)
# Needs root, debootstrap and podman. Work files stay in .image/ (ignored by git). Does nothing if IMAGE exists.
set -euo pipefail
image="${1:-localhost/seqserve-base:bookworm-python3.11}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
work="${IMAGE_WORKDIR:-.image}"
# crun fails on this machine's hybrid cgroups; runc (apt-get install runc) works. PODMAN overrides.
read -r -a podman <<<"${PODMAN:-podman --runtime runc}"

if "${podman[@]}" image exists "$image"; then
    echo "base image $image exists"
    exit 0
fi
for tool in debootstrap podman runc; do
    command -v "$tool" >/dev/null || { echo "error: $tool is missing: apt-get install -y podman debootstrap runc" >&2; exit 1; }
done
mkdir -p "$work"
rootfs="$work/rootfs"
rm -rf "$rootfs"
echo "debootstrap bookworm (minbase + python3, python3-venv, ca-certificates) into $rootfs"
timeout 900 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -cf "$work/base.tar" .
"${podman[@]}" import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' "$work/base.tar" "$image"
rm -rf "$rootfs" "$work/base.tar"
# This machine refuses podman's default rlimits (setrlimit RLIMIT_NOFILE: not permitted), hence explicit ones.
"${podman[@]}" run --rm --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 "$image" python3 --version
