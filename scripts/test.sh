#!/usr/bin/env bash
# Sets everything up, then runs every project's type check, the lint and format
# checks, every project's test suite and fuzz targets, then the real-Linux
# suite (builds tools/linux-guest's kernel once; cached by input hash).
# With VMM_REQUIRE_KVM=1 (CI), a missing /dev/kvm fails the KVM suites instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NX_DAEMON=false NX_NO_CLOUD=true
npx nx run-many -t typecheck --outputStyle=static
# ESLint (eslint.config.mjs): typescript-eslint with type-aware rules.
npm run lint
npx nx run-many -t test --outputStyle=static --parallel=2
# Every package's fuzz targets for FUZZ_SECONDS each (default 15; docs/fuzzing.md), after replaying their regression inputs.
npx nx run-many -t fuzz --outputStyle=static --parallel=1
npx nx run vmm:e2e-linux --outputStyle=static
# Prettier (.prettierrc.json): last, so that formatting never hides a test result; `npm run format` fixes it.
npm run format:check
