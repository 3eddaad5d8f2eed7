#!/usr/bin/env bash
# Builds one image from a Containerfile into an OCI archive with whichever builder works
# here: docker (only if its engine answers), podman, or buildah (installed from Debian when
# none is present). No registry is contacted: the images are FROM scratch.
#
#   scripts/build-image.sh FILE CONTEXT NAME:TAG OUT.oci.tar
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 FILE CONTEXT NAME:TAG OUT.oci.tar" >&2; exit 2; }
file=$1 context=$2 ref=$3 out=$4
cache=${QUIC_INGRESS_CACHE:-$HOME/.cache/quic-ingress}
mkdir -p "$(dirname "$out")"
rm -f "$out"

builder=${IMAGE_BUILDER:-}
if [ -z "$builder" ]; then
  # A docker client without a reachable engine is common (CI sandboxes): ask the engine.
  if command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; then
    builder=docker
  elif command -v podman >/dev/null 2>&1; then
    builder=podman
  else
    command -v buildah >/dev/null 2>&1 || "$(dirname "$0")/ensure-packages.sh" buildah
    builder=buildah
  fi
fi

case $builder in
  docker)
    docker build -q -t "$ref" -f "$file" "$context" >/dev/null
    # docker save writes an OCI image layout (docker 25 and later), which ctr imports.
    docker save -o "$out" "$ref"
    ;;
  podman)
    podman build -q -t "$ref" -f "$file" "$context" >/dev/null
    podman save --format oci-archive -o "$out" "$ref"
    ;;
  buildah)
    # Its own storage (vfs: no overlay mounts to leave behind) and chroot isolation: no
    # RUN steps, so nothing needs a container runtime.
    store=(--root "$cache/buildah/root" --runroot "$cache/buildah/run" --storage-driver vfs)
    buildah "${store[@]}" bud -q --isolation chroot --layers=false -t "$ref" -f "$file" "$context" >/dev/null
    buildah "${store[@]}" push -q "$ref" "oci-archive:$out:$ref"
    # Only the archive is kept; the local storage would otherwise grow with each build.
    buildah "${store[@]}" rmi -f "$ref" >/dev/null 2>&1 || true
    ;;
  *) echo "unknown IMAGE_BUILDER: $builder" >&2; exit 2 ;;
esac
echo "image: $ref -> $out ($(du -k "$out" | cut -f1) KiB, built with $builder)" >&2
