#!/usr/bin/env bash
# Sets up the offline ESP-IDF SDK for the linux target (../shared/esp-idf-linux/, see its README)
# outside the repository: ESPMDM_IDF_SDK (default ~/.cache/espmdm/idf) gets the unpacked SDK, a
# Python virtualenv with IDF's core requirements, and the empty constraints file idf.py wants.
# Installs the Debian packages the build needs (cmake ninja-build libbsd-dev python3-venv).
# Idempotent and fast when done: a marker records the tarball's SHA-256.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
sdk=${ESPMDM_IDF_SDK:-${XDG_CACHE_HOME:-$HOME/.cache}/espmdm/idf}
# The tarball is in shared/ beside the repository (../shared from its root; two levels up for a
# git worktree kept in a folder of worktrees; /work/shared for a clone made elsewhere on this
# workplace's machines).
tarball=${ESPMDM_IDF_TARBALL:-}
if [ -z "$tarball" ]; then
  for d in "$here/../../shared" "$here/../../../shared" /work/shared; do
    if [ -f "$d/esp-idf-linux/esp-idf-linux-sdk.tar.gz" ]; then
      tarball="$d/esp-idf-linux/esp-idf-linux-sdk.tar.gz"
      break
    fi
  done
fi
tarball=${tarball:-$here/../../shared/esp-idf-linux/esp-idf-linux-sdk.tar.gz}

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
pkgs=()
command -v cmake >/dev/null 2>&1 || pkgs+=(cmake)
command -v ninja >/dev/null 2>&1 || pkgs+=(ninja-build)
dpkg -s libbsd-dev >/dev/null 2>&1 || pkgs+=(libbsd-dev)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || pkgs+=(python3-venv)
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "firmware: installing ${pkgs[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

if [ ! -f "$tarball" ]; then
  if [ -f "$sdk/.ready" ]; then
    # Set up before from a tarball that is not reachable from this checkout: keep it.
    exit 0
  fi
  echo "firmware: the ESP-IDF SDK tarball is missing: $tarball (set ESPMDM_IDF_TARBALL)" >&2
  exit 1
fi
sum=$(sha256sum "$tarball" | cut -c1-64)
if [ "$(cat "$sdk/.ready" 2>/dev/null || true)" = "$sum" ]; then
  exit 0
fi
began=$SECONDS
echo "firmware: setting up the ESP-IDF SDK in $sdk" >&2
rm -rf "$sdk/esp-idf-linux-sdk" "$sdk/venv" "$sdk/.ready"
mkdir -p "$sdk/tools"
tar -xzf "$tarball" -C "$sdk"
python3 -m venv "$sdk/venv"
"$sdk/venv/bin/pip" install -q --disable-pip-version-check \
  -r "$sdk/esp-idf-linux-sdk/esp-idf/tools/requirements/requirements.core.txt"
# idf.py and IDF's CMake insist on a constraints file the online installer would download.
touch "$sdk/tools/espidf.constraints.v6.2.txt"
echo "$sum" > "$sdk/.ready"
echo "firmware: SDK ready in $((SECONDS - began))s" >&2
