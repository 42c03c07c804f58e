#!/usr/bin/env bash
# Sets everything up, then boots the guest kit on /dev/kvm and shows its serial output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "demo: npx vmm run --kernel tools/guest-kit/build/guest.elf --cmdline test=pci-scan --trace-boot"
exec npx vmm run --kernel tools/guest-kit/build/guest.elf --cmdline "test=pci-scan" --trace-boot
