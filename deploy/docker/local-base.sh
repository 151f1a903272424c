#!/usr/bin/env bash
# A local stand-in for python:3.11-slim where no image registry is reachable: Debian bookworm
# (whose python3 is 3.11) from debootstrap, imported into Docker. Build the image on it with
#   docker build --build-arg BASE=tokenway-base:bookworm -f deploy/docker/Dockerfile .
#
# Usage: deploy/docker/local-base.sh [TAG]   (default tokenway-base:bookworm; needs root, debootstrap)
# The rootfs tarball is kept in $TOKENWAY_CACHE (default ~/.cache/tokenway) and reused: delete it to
# rebuild. An image already under TAG is left as it is.
set -euo pipefail
tag=${1:-tokenway-base:bookworm}
cache=${TOKENWAY_CACHE:-$HOME/.cache/tokenway}
tarball=$cache/bookworm-python3.tar

if "${DOCKER:-docker}" image inspect "$tag" >/dev/null 2>&1; then
    echo "local-base: $tag is there"
    exit 0
fi
if [ ! -s "$tarball" ]; then
    mkdir -p "$cache"
    root=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    echo "local-base: debootstrap bookworm into $root (a few minutes)"
    # python3-venv: the official image's python has ensurepip; Debian's needs this package for it.
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" >"$cache/debootstrap.log"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
fi
"${DOCKER:-docker}" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tarball" "$tag" >/dev/null
echo "local-base: imported $tarball as $tag"
