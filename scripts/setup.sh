#!/usr/bin/env bash
# Installs what the project needs on a fresh machine of this kind and builds it:
# apt packages (only if missing), npm dependencies, the guest kit, the native
# addon and the VMM bundle. Safe to run again; it skips what is already there.
#
# Each step announces itself and prints a progress line every 10 s while it
# runs; a failing step prints the tool's own output and the command that
# reruns it (scripts/lib/run-step.sh). STEP_VERBOSE=1 streams every tool's
# output instead.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/run-step.sh
source scripts/lib/run-step.sh
STEP_PREFIX=setup
STEP_TOTAL=5
STEP_RERUN_ALL="npm run setup"

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
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo "
  export DEBIAN_FRONTEND=noninteractive
  apt_cmd="${sudo}apt-get update && ${sudo}apt-get install -y --no-install-recommends ${need_apt[*]}"
  run_step 1 "installing ${need_apt[*]} from apt" "$apt_cmd" -- bash -c "$apt_cmd"
else
  step_skip 1 "apt packages: gcc, g++, make, cmake, python3, iproute2 and qemu-system-x86_64 are all present"
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  # --loglevel=http: one line per download, so the progress lines move.
  run_step 2 "installing npm dependencies (npm ci; a minute or two on a fresh clone)" "npm ci" -- \
    npm ci --no-audit --no-fund --loglevel=http
else
  step_skip 2 "npm dependencies: node_modules is up to date with package-lock.json"
fi

export NX_DAEMON=false NX_NO_CLOUD=true NX_SKIP_NX_CACHE=${NX_SKIP_NX_CACHE:-false}
# The guest kit first: it is the quickest to build and to break.
run_step 3 "building the guest kit (freestanding C test guest: make -C tools/guest-kit)" \
  "NX_DAEMON=false npx nx run guest-kit:build   (or: make -C tools/guest-kit)" -- \
  npx nx run guest-kit:build --outputStyle=static
run_step 4 "building the native addon (C++, cmake-js; about a minute on 2 cores)" \
  "NX_DAEMON=false npx nx run kvm-native:build-native   (or: node libs/kvm-native/scripts/build-native.js)" -- \
  npx nx run kvm-native:build-native --outputStyle=static
run_step 5 "bundling the VMM (esbuild: apps/vmm/dist)" \
  "NX_DAEMON=false npx nx run vmm:build   (or: node apps/vmm/scripts/bundle.js)" -- \
  npx nx run vmm:build --outputStyle=static
step_say "done; try: npm run demo"
