#!/usr/bin/env node
'use strict';
const fs = require('fs');
const path = require('path');
const bundle = path.resolve(__dirname, '../dist/main.js');
if (!fs.existsSync(bundle)) {
  process.stderr.write('vhost-user-scsi: not built yet; run `node apps/vhost-user-scsi/scripts/bundle.js`\n');
  process.exit(1);
}
require(bundle)
  .main(process.argv.slice(2))
  .then(
    (code) => process.exit(code),
    (e) => {
      process.stderr.write(`vhost-user-scsi: internal error: ${(e && e.stack) || e}\n`);
      process.exit(1);
    },
  );
