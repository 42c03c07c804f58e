#!/usr/bin/env node
// A one-shot QMP client for the shell (docs/getting-started.md):
//   node scripts/qmp.js SOCKET COMMAND ['{"json": "arguments"}']
// connects to the VMM's `--qmp unix:SOCKET`, negotiates, runs COMMAND and
// prints its return value (a string as text, anything else as indented JSON).
// Exit status: 0 on success, 1 when the VMM answers with an error or cannot be
// reached, 2 on a usage error. Also a module: { connect } for scripts/demo-linux.js.
'use strict';
const net = require('net');

class QmpError extends Error {}

/** Connects to a QMP unix socket; resolves with { execute(cmd, args), close() } after qmp_capabilities. */
async function connect(sock, timeoutMs = 30_000) {
  const s = await new Promise((resolve, reject) => {
    const c = net.createConnection(sock, () => resolve(c));
    c.once('error', (e) => reject(new QmpError(`cannot connect to the QMP socket ${sock}: ${e.code || e.message}`)));
  });
  s.setEncoding('utf8');
  let buf = '';
  const replies = [];
  let wake;
  let broken;
  s.on('data', (d) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line) continue;
      let m;
      try {
        m = JSON.parse(line);
      } catch {
        broken = `not JSON from the VMM: ${line.slice(0, 200)}`;
        s.destroy();
        break;
      }
      if (m === null || typeof m !== 'object' || Array.isArray(m) || 'event' in m) continue; // events are not replies
      replies.push(m);
    }
    if (wake) wake();
  });
  const closed = () => wake && wake();
  s.on('error', closed);
  s.on('close', closed);
  const next = async (what) => {
    const deadline = setTimeout(() => {
      broken = `no reply to ${what} within ${timeoutMs / 1000} s`;
      s.destroy();
    }, timeoutMs);
    try {
      while (!replies.length) {
        if (broken) throw new QmpError(broken);
        if (s.destroyed) throw new QmpError(`the VMM closed the QMP connection before answering ${what}`);
        await new Promise((r) => (wake = r));
        wake = undefined;
      }
      return replies.shift();
    } finally {
      clearTimeout(deadline);
    }
  };
  const greeting = await next('the connection (greeting)');
  if (!greeting.QMP) throw new QmpError(`${sock} is not a QMP server (greeting ${JSON.stringify(greeting).slice(0, 200)})`);
  const execute = async (cmd, args) => {
    s.write(`${JSON.stringify(args === undefined ? { execute: cmd } : { execute: cmd, arguments: args })}\n`);
    const r = await next(cmd);
    if (r.error) throw new QmpError(`${cmd}: ${r.error.class}: ${r.error.desc}`);
    return r.return;
  };
  await execute('qmp_capabilities');
  return { execute, close: () => s.end() };
}

async function main(argv) {
  if (argv.length < 2 || argv.length > 3 || argv[0] === '--help' || argv[0] === '-h') {
    process.stderr.write(
      'usage: node scripts/qmp.js SOCKET COMMAND [ARGUMENTS-JSON]\n  e.g. node scripts/qmp.js /tmp/vmm.sock x-query-virtio-queue-status \'{"path": "disk0", "queue": 0}\'\n',
    );
    return 2;
  }
  const [sock, cmd, json] = argv;
  let args;
  if (json !== undefined) {
    try {
      args = JSON.parse(json);
    } catch (e) {
      process.stderr.write(`qmp: the arguments are not JSON: ${e.message}\n`);
      return 2;
    }
    if (args === null || typeof args !== 'object' || Array.isArray(args)) {
      process.stderr.write('qmp: the arguments must be a JSON object, e.g. \'{"path": "disk0"}\'\n');
      return 2;
    }
  }
  try {
    const q = await connect(sock);
    // quit: the VMM may close the connection before its reply arrives.
    const ret = await q.execute(cmd, args).catch((e) => {
      if (cmd === 'quit' && /closed the QMP connection/.test(e.message)) return {};
      throw e;
    });
    q.close();
    process.stdout.write(typeof ret === 'string' ? ret.replace(/\n?$/, '\n') : `${JSON.stringify(ret, null, 2)}\n`);
    return 0;
  } catch (e) {
    if (!(e instanceof QmpError)) throw e;
    process.stderr.write(`qmp: ${e.message}\n`);
    return 1;
  }
}

module.exports = { connect, QmpError };

if (require.main === module)
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e) => {
      process.stderr.write(`qmp: ${e && e.message}\n`);
      process.exit(1);
    },
  );
