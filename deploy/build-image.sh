#!/usr/bin/env bash
# Builds the Dockerfile as IMAGE (default nbo-api): with docker where a daemon answers,
# else with buildah (--isolation chroot: no daemon, no user namespaces needed). When the
# base image cannot be pulled, the local stand-in is built first (deploy/base-image.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${IMAGE:-nbo-api}"
BASE="${BASE:-python:3.11-slim}"
start=$(date +%s)
if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then
    docker build --build-arg BASE="$BASE" -t "$IMAGE" .
else
    command -v buildah >/dev/null || { echo "neither a docker daemon nor buildah" >&2; exit 1; }
    if ! buildah inspect --type image "$BASE" >/dev/null 2>&1 \
        && ! timeout 60 buildah pull --quiet "docker.io/library/$BASE" >/dev/null 2>&1; then
        echo "cannot pull $BASE: building the local stand-in (deploy/base-image.sh)" >&2
        BASE_TAG="$BASE" deploy/base-image.sh
    fi
    # --format docker: the OCI format has no HEALTHCHECK and buildah would drop it.
    buildah bud --isolation chroot --layers --format docker --build-arg BASE="$BASE" -t "$IMAGE" .
fi
echo "built $IMAGE in $(( $(date +%s) - start )) s"
