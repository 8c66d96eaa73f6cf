#!/usr/bin/env bash
# Builds a host (linux target) application of firmware/ with the SDK set up by setup-sdk.sh and
# copies its binary to OUT:
#   firmware/build.sh device bin/espmdm-device     the host device (make firmware)
#   firmware/build.sh test   bin/espmdm-unit-tests the component's unit tests (make firmware-test)
# ESP-IDF compiles the build directory's absolute path into the binary, so each project builds in
# a stable directory of the SDK cache, one per checkout (keyed by the project's path); nothing is
# written into the repository but OUT. The binaries do not read their build directory at run
# time (the host device brings its partition table and flash file; --coverage is taken out).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
project=${1:?usage: build.sh device|test OUT}
out=${2:?usage: build.sh device|test OUT}
sdk=${ESPMDM_IDF_SDK:-${XDG_CACHE_HOME:-$HOME/.cache}/espmdm/idf}
if [ ! -f "$sdk/.ready" ]; then
  if [ -n "${CI:-}" ]; then
    echo "firmware: FAIL: the ESP-IDF SDK is not set up in $sdk (ESPMDM_IDF_SDK): make deps sets it up" >&2
    exit 1
  fi
  bash "$here/setup-sdk.sh"
fi
src="$here/$project"
[ -f "$src/CMakeLists.txt" ] || { echo "firmware: no project $project" >&2; exit 64; }
key=$(printf '%s' "$src" | sha256sum | cut -c1-12)
build="$sdk/build/$project-$key"
# What CMake does not track itself (sdkconfig is generated from the defaults once).
inputs=$(cat "$src/sdkconfig.defaults" "$src/partitions.csv" "$sdk/.ready" 2>/dev/null | sha256sum | cut -c1-16)
if [ "$(cat "$build/.espmdm-inputs" 2>/dev/null || true)" != "$inputs" ]; then
  rm -rf "$build"
fi
mkdir -p "$build"
export IDF_PATH="$sdk/esp-idf-linux-sdk/esp-idf" IDF_PYTHON_ENV_PATH="$sdk/venv" IDF_TOOLS_PATH="$sdk/tools" \
       IDF_COMPONENT_MANAGER=0 PATH="$sdk/venv/bin:$PATH"
began=$SECONDS
log="$build/build.log"
if [ ! -f "$build/build.ninja" ]; then
  if ! cmake -G Ninja -S "$src" -B "$build" -DIDF_TARGET=linux -DSDKCONFIG="$build/sdkconfig" \
       -DSDKCONFIG_DEFAULTS="$src/sdkconfig.defaults" -DPYTHON="$sdk/venv/bin/python" \
       -DESPMDM_IDF_EXT="$sdk/esp-idf-linux-sdk/ext" >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "firmware: FAIL: configuring $project (log: $log)" >&2
    exit 1
  fi
  echo "$inputs" > "$build/.espmdm-inputs"
fi
if ! ninja -C "$build" >"$log" 2>&1; then
  grep -E 'error|Error' "$log" | head -40 >&2 || true
  tail -20 "$log" >&2
  echo "firmware: FAIL: building $project (log: $log)" >&2
  exit 1
fi
elf=$(ls "$build"/*.elf | head -1)
mkdir -p "$(dirname "$out")"
cp "$elf" "$out.tmp" && mv "$out.tmp" "$out"
echo "firmware: $project built in $((SECONDS - began))s -> $out" >&2
