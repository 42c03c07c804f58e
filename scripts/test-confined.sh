#!/usr/bin/env bash
# The virtio-scsi and vhost-scsi (user back-end) guest-kit suites with every `vmm run`
# confined: --sandbox on --run-with user=nobody (docs/security.md#tests). Needs root
# (the VMM drops to nobody) and the builds `npm test` makes. About two minutes: the
# guest, hostile-guest and migration files of virtio-scsi; of vhost-scsi the guest and
# hostile-guest files and one live migration (ioeventfd=on) between two back-ends.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "test-confined: run as root (--run-with user=nobody drops from root)" >&2
  exit 1
fi
export VMM_TEST_SANDBOX=on VMM_TEST_RUN_WITH=user=nobody
(cd plugins/virtio-scsi && npx jest --ci test/guest.test.ts test/hostile.test.ts test/migration.test.ts)
(cd plugins/vhost-scsi && npx jest --ci test/guest.test.ts test/hostile.test.ts)
(cd plugins/vhost-scsi && npx jest --ci test/migration.test.ts -t 'ioeventfd=on')
