#!/usr/bin/env bash
# Builds a local stand-in for python:3.11-slim where no registry serves the official image
# (used by deploy/build-image.sh only when the official one cannot be pulled). Debian
# bookworm from its mirror (debootstrap --variant=minbase), Python 3.11 in a venv at
# /opt/python (first on PATH, so console scripts pip installs are found, as in the official
# image; python and pip also linked into /usr/local/bin) with pip, setuptools, wheel, the C headers
# (python3-dev), as the official image has them, and no compiler (the Dockerfile's builder
# stage installs gcc itself).
# Only in this stand-in, and only when the host has one, the host's CA bundle is added so
# pip inside the build can reach the package index through the host's trust store.
# Idempotent: nothing is done when the tag exists; the rootfs import is cached too.
set -euo pipefail
TAG="${BASE_TAG:-python:3.11-slim}"
DEBIAN_TAG="localhost/debian:bookworm"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${NBO_IMAGE_CACHE:-/var/cache/nbo-image}"

if buildah inspect --type image "$TAG" >/dev/null 2>&1; then
    echo "base image $TAG present"; exit 0
fi
if ! buildah inspect --type image "$DEBIAN_TAG" >/dev/null 2>&1; then
    mkdir -p "$CACHE"
    rootfs="$CACHE/rootfs-bookworm"
    if [ ! -f "$rootfs/.complete" ]; then
        rm -rf "$rootfs"
        debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR"
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
        touch "$rootfs/.complete"
    fi
    tar -C "$rootfs" --exclude=./.complete -c . | podman import - "$DEBIAN_TAG"
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
ca_copy=""
for ca in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [ -s "$ca" ]; then
        cp "$ca" "$ctx/host-ca.crt"
        ca_copy='COPY host-ca.crt /usr/local/share/ca-certificates/host-ca.crt
RUN update-ca-certificates
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt'
        break
    fi
done
touch "$ctx/.keep"
cat > "$ctx/Containerfile" <<CONTAINERFILE
FROM $DEBIAN_TAG
ENV LANG=C.UTF-8 PATH=/opt/python/bin:/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
RUN apt-get update \\
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev ca-certificates \\
    && rm -rf /var/lib/apt/lists/*
$ca_copy
RUN python3 -m venv /opt/python \\
    && /opt/python/bin/pip install --no-cache-dir --upgrade pip setuptools wheel \\
    && for b in python python3 pip pip3; do ln -sf /opt/python/bin/\$b /usr/local/bin/\$b; done
CMD ["python3"]
CONTAINERFILE
buildah bud --isolation chroot --layers -t "$TAG" -f "$ctx/Containerfile" "$ctx"
echo "base image $TAG built (local stand-in)"
