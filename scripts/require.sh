#!/usr/bin/env bash
# Checks (and where it can, installs) what `make` targets need, saying how to get what is missing.
set -euo pipefail

case "${1:-}" in
python)
  py="${PYTHON:-python3}"
  if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "sso-sidecar needs Python >= 3.11 ($py is missing or older). On Debian/Ubuntu: apt-get install python3 python3-venv" >&2
    exit 1
  fi
  if ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
    minor=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    if [ "$(command -v "$py")" = "/usr/bin/python$minor" ] && command -v apt-get >/dev/null 2>&1; then
      # Debian's own interpreter (the Makefile's default where it exists) keeps venv's pip in a package of its own.
      echo "Installing Debian packages: python$minor-venv"
      sudo=""
      [ "$(id -u)" -eq 0 ] || sudo="sudo"
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "python$minor-venv"
    else
      echo "Python's venv module is missing. On Debian/Ubuntu: apt-get install python3-venv" >&2
      exit 1
    fi
  fi
  ;;
node)
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "The local identity provider needs Node.js >= 20 with npm (https://nodejs.org, or NodeSource packages)." >&2
    echo "Debian 12's own nodejs package is 18, which is too old." >&2
    exit 1
  fi
  major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$major" -lt 20 ]; then
    echo "Node.js $(node --version) is too old: the local identity provider (oidc-provider 9) needs Node.js >= 20." >&2
    exit 1
  fi
  ;;
system-deps)
  missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing Debian packages: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  ;;
image-deps)
  # What `make test-image` needs: podman (with runc, which works where crun does not, netavark and catatonit
  # for pods) and debootstrap for the stand-in base image. One apt-get call, only when something is missing.
  missing=()
  for pkg in podman runc netavark catatonit debootstrap; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "make test-image needs podman and debootstrap (Debian/Ubuntu packages: ${missing[*]})." >&2
      exit 1
    fi
    echo "Installing Debian packages: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  ;;
*)
  echo "usage: scripts/require.sh python|node|system-deps|image-deps" >&2
  exit 2
  ;;
esac
