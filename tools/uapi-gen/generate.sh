#!/usr/bin/env bash
# Regenerates TypeScript constants from the Linux UAPI headers in /usr/include/linux.
# Usage: tools/uapi-gen/generate.sh            (writes every generated file in the repo)
#        tools/uapi-gen/generate.sh NAME OUT   (one generator: kvm, virtio, virtio-blk, virtio-net, virtio-scsi)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gen() {
  local name=$1 out=$2
  gcc -O0 -o "$tmp/gen-$name" "$here/gen-$name-uapi.c"
  mkdir -p "$(dirname "$out")"
  "$tmp/gen-$name" > "$out"
}
if [ $# -eq 2 ]; then
  gen "$1" "$2"
elif [ $# -eq 1 ]; then
  gen kvm "$1"   # backwards compatible: one argument is the kvm output
else
  gen kvm "$root/libs/kvm-native/src/generated/kvm-uapi.ts"
  gen virtio "$root/libs/virtio-core/src/generated/virtio-uapi.ts"
  gen virtio-blk "$root/plugins/virtio-blk/src/generated/virtio-blk-uapi.ts"
  gen virtio-net "$root/plugins/virtio-net/src/generated/virtio-net-uapi.ts"
  gen virtio-scsi "$root/libs/virtio-scsi-core/src/generated/virtio-scsi-uapi.ts"
fi
