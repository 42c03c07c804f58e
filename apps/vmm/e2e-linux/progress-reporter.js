// Jest reporter for the real-Linux suite: a line when each test starts and one
// when it ends (the default reporter prints nothing until the whole file is
// done, which is many minutes of silence with one test file of guest boots).
'use strict';
const path = require('path');

class ProgressReporter {
  constructor() {
    this.started = 0;
    this.finished = 0;
    this.t0 = Date.now();
  }

  say(line) {
    const s = Math.round((Date.now() - this.t0) / 1000);
    process.stderr.write(`e2e-linux [${s} s] ${line}\n`);
  }

  onTestFileStart(test) {
    this.say(`running ${path.relative(process.cwd(), test.path)}`);
  }

  onTestCaseStart(_test, info) {
    this.started++;
    this.say(`#${this.started} started: ${info.fullName}`);
  }

  onTestCaseResult(_test, result) {
    this.finished++;
    const secs = result.duration == null ? '' : ` in ${Math.round(result.duration / 1000)} s`;
    this.say(`#${this.finished} ${result.status}${secs}: ${result.fullName}`);
  }
}

module.exports = ProgressReporter;
