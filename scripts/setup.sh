#!/usr/bin/env bash
# Installs what the project needs on a fresh machine of this kind and builds it:
# apt packages (only if missing), npm dependencies, the native addon, the guest
# kit and the VMM bundle. Safe to run again; it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v gcc >/dev/null || need_apt+=(gcc)
command -v g++ >/dev/null || need_apt+=(g++)
command -v make >/dev/null || need_apt+=(make)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v python3 >/dev/null || need_apt+=(python3)
command -v ip >/dev/null || need_apt+=(iproute2)
# the reference the interop test and the benchmarks compare with
command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} from apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

export NX_DAEMON=false NX_NO_CLOUD=true NX_SKIP_NX_CACHE=${NX_SKIP_NX_CACHE:-false}
echo "setup: building the native addon, the guest kit and the VMM"
npx nx run-many -t build-native build --outputStyle=static >/dev/null
echo "setup: done"
