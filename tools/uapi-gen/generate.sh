#!/usr/bin/env bash
# Regenerates the KVM UAPI constants from /usr/include/linux/kvm.h.
# Usage: tools/uapi-gen/generate.sh [OUT]   (default: libs/kvm-native/src/generated/kvm-uapi.ts)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/libs/kvm-native/src/generated/kvm-uapi.ts}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gcc -O0 -o "$tmp/gen" "$here/gen-kvm-uapi.c"
mkdir -p "$(dirname "$out")"
"$tmp/gen" > "$out"
