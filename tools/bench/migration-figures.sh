#!/usr/bin/env bash
# Live-migration figures: a 256 MiB guest (guest kit test=mig-mem) dirtying a
# region at a rate set by DELAY (spins between page writes), migrated between
# two local VMMs over a unix socket; then the same guest between two QEMUs
# (the reference, same run, interleaved). Prints each run's query-migrate
# figures, checks that the destination verified every page, and ends with a
# table of medians and ratios (ours / QEMU).
# Usage: tools/bench/migration-figures.sh [--reps N] [--no-qemu] [DELAY...]   (default: 3 reps; 100 10 0)
set -euo pipefail
cd "$(dirname "$0")/../.."
K=tools/guest-kit/build/guest.elf
REPS=3
QEMU=qemu-system-x86_64
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS=$2; shift 2 ;;
    --no-qemu) QEMU=; shift ;;
    *) break ;;
  esac
done
DELAYS=("${@:-100 10 0}")
if [ -n "$QEMU" ] && ! command -v "$QEMU" >/dev/null; then
  echo "migration-figures: $QEMU not found (apt-get install -y qemu-system-x86, or --no-qemu)" >&2
  exit 2
fi
T=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$T"' EXIT
qmp() { # SOCK JSON -> the reply (after qmp_capabilities)
  node -e '
    const s = require("net").createConnection(process.argv[1]); let b = "", n = 0;
    s.on("data", (d) => { b += d; let i; while ((i = b.indexOf("\n")) >= 0) { const m = JSON.parse(b.slice(0, i)); b = b.slice(i + 1);
      if ("QMP" in m) s.write("{\"execute\":\"qmp_capabilities\"}\n"); else if ("return" in m || "error" in m) {
        if (n++ === 0) s.write(process.argv[2] + "\n"); else { console.log(JSON.stringify(m)); s.end(); } } } });' "$1" "$2"
}
wait_sock() { for _ in $(seq 1 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; return 1; }

# run RUNNER DELAY: one migration; appends "RUNNER DELAY total downtime bytes rate syncs" to $T/rows
run() {
  local who=$1 d=$2 cmd="test=mig-mem mb=128 passes=6 delay=$2"
  rm -f $T/*.out $T/*.err $T/*.sock
  if [ "$who" = vmm ]; then
    node apps/vmm/dist/main.js run --memory 256M --kernel $K --cmdline "$cmd" --incoming unix:$T/in.sock --serial file:$T/b.out 2>$T/b.err &
    node apps/vmm/dist/main.js run --memory 256M --kernel $K --cmdline "$cmd" --qmp unix:$T/a.sock --serial file:$T/a.out 2>$T/a.err &
  else
    # QEMU's default max-bandwidth (128 MiB/s) would make it the bottleneck; ours has no limit: lift it.
    local q=("$QEMU" -enable-kvm -m 256 -display none -no-reboot -kernel $K -append "$cmd" -device isa-debug-exit,iobase=0xf4,iosize=4)
    "${q[@]}" -serial file:$T/b.out -incoming unix:$T/in.sock 2>$T/b.err &
    "${q[@]}" -serial file:$T/a.out -qmp unix:$T/a.sock,server=on,wait=off 2>$T/a.err &
    wait_sock $T/a.sock
    qmp $T/a.sock '{"execute":"migrate-set-parameters","arguments":{"max-bandwidth":100000000000,"downtime-limit":300}}' >/dev/null
  fi
  until grep -q "pass=1 " $T/a.out 2>/dev/null; do sleep 0.05; done
  wait_sock $T/in.sock
  qmp $T/a.sock '{"execute":"migrate","arguments":{"uri":"unix:'$T'/in.sock"}}' >/dev/null
  until qmp $T/a.sock '{"execute":"query-migrate"}' > $T/q.json && grep -q '"completed"\|"failed"' $T/q.json; do sleep 0.1; done
  qmp $T/a.sock '{"execute":"quit"}' >/dev/null 2>&1 || true # QEMU drops the connection as it quits
  wait
  echo "$who delay=$d $(cat $T/q.json)"
  grep -q "mig-mem verified" $T/b.out || { echo "$who: the destination did not verify: $(tail -3 $T/b.out) $(cat $T/b.err)" >&2; exit 1; }
  node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).return;
    if (r.status !== "completed") { console.error(`${process.argv[2]}: ${r.status} ${r["error-desc"] ?? ""}`); process.exit(1); }
    // Field 7: downtime up to the last byte sent (QEMU reports that as its downtime; ours also has x-downtime-sent).
    console.log([process.argv[2], process.argv[3], r["total-time"], r.downtime, r.ram.transferred, r.ram["dirty-pages-rate"], r.ram["dirty-sync-count"], r["x-downtime-sent"] ?? r.downtime].join(" "));
  ' $T/q.json "$who" "$d" >> $T/rows
}

for rep in $(seq 1 "$REPS"); do
  for d in ${DELAYS[*]}; do
    run vmm "$d"
    [ -n "$QEMU" ] && run qemu "$d"
  done
done

echo
node -e '
  const rows = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map((l) => l.split(" "));
  const med = (a) => { const s = [...a].sort((x, y) => x - y); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
  const pick = (who, d, i) => rows.filter((r) => r[0] === who && r[1] === d).map((r) => Number(r[i]));
  const qemu = process.argv[2] === "1";
  console.log(`medians of ${process.argv[3]} runs each, 256 MiB guest, 128 MiB dirtied at a set rate, downtime-limit 300 ms, unix socket` + (qemu ? "; QEMU in the same run" : ""));
  console.log("| delay | dirty rate (last pass) | total ms | downtime ms (to answer / to last byte) | MiB sent | syncs |" + (qemu ? " QEMU total | QEMU downtime (to last byte) | QEMU MiB | total ratio | downtime ratio (to last byte) |" : ""));
  console.log("|---|---|---|---|---|---|" + (qemu ? "---|---|---|---|---|" : ""));
  for (const d of [...new Set(rows.map((r) => r[1]))]) {
    const v = (i) => med(pick("vmm", d, i));
    const q = (i) => med(pick("qemu", d, i));
    const rate = `${(v(5) * 4096 / 1048576).toFixed(1)} MiB/s`;
    let line = `| ${d} | ${rate} | ${v(2)} | ${v(3)} / ${v(7)} | ${(v(4) / 1048576).toFixed(0)} | ${v(6)} |`;
    if (qemu) line += ` ${q(2)} | ${q(7)} | ${(q(4) / 1048576).toFixed(0)} | ${(v(2) / q(2)).toFixed(2)}x | ${(v(7) / q(7)).toFixed(2)}x |`;
    console.log(line);
  }
' $T/rows "$([ -n "$QEMU" ] && echo 1 || echo 0)" "$REPS"
