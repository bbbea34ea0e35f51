#!/usr/bin/env bash
# Builds the sidecar's container image with podman on a machine that cannot pull images (CI, `make test-image`).
#
#   scripts/image.sh base            the stand-in base image, unless it exists (Debian bookworm + python3)
#   scripts/image.sh build [TAG]     the base, then the Dockerfile with --build-arg BASE=<stand-in>
#
# The stand-in replaces python:3.11-slim-bookworm: `debootstrap --variant=minbase bookworm` from the apt
# mirror this machine is configured with, plus python3 (3.11), python3-venv and ca-certificates, imported with
# `podman import`. Its root filesystem tarball is kept in the cache directory (outside the repository) and the
# image in podman's store, so only the first build on a machine pays for debootstrap.
#
# pip inside the build reaches the same package indexes as pip on this machine: a pip.conf made from this
# machine's settings, its CA bundle and any local wheel directories are mounted into the build's RUN steps
# (`podman build --volume`), never copied into a layer.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${SSO_SIDECAR_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/sso-sidecar}"
# Bump the suffix whenever the recipe below changes, so a cached base of the old recipe is not reused.
BASE_IMAGE="localhost/sso-sidecar-base:bookworm-1"
BASE_PACKAGES="python3,python3-venv,ca-certificates"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/tests/deploy/image/containers.conf}"

log() { printf '%s image.sh: %s\n' "$(date +%T)" "$*" >&2; }

apt_mirror() {
  # The first Debian archive this machine's apt uses (deb822 or one-line sources); deb.debian.org otherwise.
  local uri
  uri=$(sed -n 's/^URIs:[[:space:]]*\(http[^[:space:]]*\/debian\)[[:space:]]*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
  if [ -z "$uri" ]; then
    uri=$(sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\(http[^[:space:]]*\/debian\)[[:space:]]\+bookworm[[:space:]].*/\2/p' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

base_rootfs() {
  local tarball="$CACHE/${BASE_IMAGE##*:}-rootfs.tar"
  if [ ! -s "$tarball" ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "image.sh: the stand-in base needs root (debootstrap, and podman as root): run it with sudo." >&2
      exit 1
    fi
    local root mirror
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    mirror=$(apt_mirror)
    log "debootstrap bookworm ($BASE_PACKAGES) from $mirror"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$root" "$mirror" >"$CACHE/debootstrap.log" 2>&1 ||
      { tail -n 20 "$CACHE/debootstrap.log" >&2; rm -rf "$root"; exit 1; }
    # What a slim image leaves out: downloaded packages, package lists, documentation, translations.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
      "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  echo "$tarball"
}

base() {
  mkdir -p "$CACHE"
  if podman image exists "$BASE_IMAGE"; then
    log "stand-in base $BASE_IMAGE exists"
    return
  fi
  local tarball
  tarball=$(base_rootfs)
  log "podman import $tarball as $BASE_IMAGE"
  podman import --quiet --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tarball" "$BASE_IMAGE" >/dev/null
}

pip_conf() {
  # This machine's effective pip settings (files and PIP_* variables) as one [global] section, first value
  # of each key winning; "constraint" is left out (its file is not in the build).
  python3 -m pip config list 2>/dev/null |
    sed -n "s/^\(:env:\|global\|install\)\.\([a-z-]*\)='\(.*\)'$/\2 = \3/p" |
    awk -F' = ' '$1 != "constraint" && !seen[$1]++' |
    { echo "[global]"; cat; }
}

build() {
  local tag="${1:-localhost/sso-sidecar:dev}"
  base
  local conf="$CACHE/pip.conf"
  pip_conf >"$conf"
  local mounts=(--volume "$conf:/etc/pip.conf:ro")
  local path
  # Every local file or directory the settings name (CA bundle, find-links, file:// indexes), read-only.
  for path in $(sed -n 's/^[a-z-]* = //p' "$conf" | tr ' ' '\n' | sed 's|^file://||; s|/simple/\?$||'); do
    if [ -e "$path" ] && [ "${path#/}" != "$path" ]; then
      mounts+=(--volume "$path:$path:ro")
    fi
  done
  log "podman build $tag (BASE=$BASE_IMAGE)"
  local started=$SECONDS
  # --format docker: the OCI image format has no HEALTHCHECK. The build's output goes to a log, shown on failure.
  podman build --format docker --network host --build-arg "BASE=$BASE_IMAGE" "${mounts[@]}" \
    --tag "$tag" --file Dockerfile . >"$CACHE/build.log" 2>&1 ||
    { tail -n 40 "$CACHE/build.log" >&2; exit 1; }
  # The build stage's image is left behind untagged at every build; it is not worth keeping.
  podman image prune --force >/dev/null
  log "built $tag in $((SECONDS - started)) s: $(podman image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1 / 1e6}')"
}

case "${1:-}" in
base) base ;;
build) build "${2:-}" ;;
*)
  echo "usage: scripts/image.sh base|build [TAG]" >&2
  exit 2
  ;;
esac
