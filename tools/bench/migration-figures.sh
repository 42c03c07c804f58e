#!/usr/bin/env bash
# Live-migration figures: a 256 MiB guest (guest kit test=mig-mem) dirtying a
# region at a rate set by DELAY (spins between page writes), migrated between
# two local VMMs over a unix socket; prints query-migrate's figures and checks
# the destination verified every page.
# Usage: tools/bench/migration-figures.sh [DELAY...]   (default: 100 10 0)
set -euo pipefail
cd "$(dirname "$0")/../.."
K=tools/guest-kit/build/guest.elf
T=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$T"' EXIT
qmp() { # SOCK JSON -> the reply
  node -e '
    const s = require("net").createConnection(process.argv[1]); let b = "", n = 0;
    s.on("data", (d) => { b += d; let i; while ((i = b.indexOf("\n")) >= 0) { const m = JSON.parse(b.slice(0, i)); b = b.slice(i + 1);
      if ("QMP" in m) s.write("{\"execute\":\"qmp_capabilities\"}\n"); else if ("return" in m || "error" in m) {
        if (n++ === 0) s.write(process.argv[2] + "\n"); else { console.log(JSON.stringify(m)); s.end(); } } } });' "$1" "$2"
}
for DELAY in "${@:-100 10 0}"; do
  for d in $DELAY; do
    CMD="test=mig-mem mb=128 passes=6 delay=$d"
    node apps/vmm/dist/main.js run --memory 256M --kernel $K --cmdline "$CMD" --incoming unix:$T/in.sock --serial file:$T/b.out 2>$T/b.err &
    node apps/vmm/dist/main.js run --memory 256M --kernel $K --cmdline "$CMD" --qmp unix:$T/a.sock --serial file:$T/a.out 2>$T/a.err &
    until grep -q "pass=1 " $T/a.out 2>/dev/null; do sleep 0.05; done
    t0=$(date +%s%N)
    qmp $T/a.sock '{"execute":"migrate","arguments":{"uri":"unix:'$T'/in.sock"}}' >/dev/null
    until qmp $T/a.sock '{"execute":"query-migrate"}' > $T/q.json && grep -q '"completed"\|"failed"' $T/q.json; do sleep 0.1; done
    qmp $T/a.sock '{"execute":"quit"}' >/dev/null || true
    wait
    echo "delay=$d $(cat $T/q.json)"
    grep -h "mig-mem verified\|FAIL" $T/b.out || echo "destination did not verify: $(cat $T/b.err)"
    rm -f $T/*.out $T/*.err
  done
done
