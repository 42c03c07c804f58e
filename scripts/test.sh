#!/usr/bin/env bash
# Sets everything up, then runs every project's type check and test suite, then
# the real-Linux suite (builds tools/linux-guest's kernel once; cached by input hash).
# With VMM_REQUIRE_KVM=1 (CI), a missing /dev/kvm fails the KVM suites instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NX_DAEMON=false NX_NO_CLOUD=true
npx nx run-many -t typecheck --outputStyle=static
npx nx run-many -t test --outputStyle=static --parallel=2
npx nx run vmm:e2e-linux --outputStyle=static
