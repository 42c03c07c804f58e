# virtio-blk: driver bound, interrupts, O_DIRECT pattern round trip, discard.
# Disk: at least 64 KiB (128 KiB to also exercise discard); its first 64 KiB
# are overwritten with /pattern and left there for the host to check.
# tsvmm.dio=1: also 1 MiB and 4 MiB O_DIRECT requests from scattered pages
# (big_dio; the disk must be >= 8 MiB).  tsvmm.fs=DEV: also the ext2 workload
# (fs_workload) on the whole of /dev/DEV (e.g. a second disk, vdb).  tsvmm.full=DEV:
# writes to /dev/DEV until the device reports an error (full_disk: its host file
# system is full), every block it accepted read back.  tsvmm.drill=1:
# then the monitor drills' idle period and I/O loop (drill_io).
dev=${tsvmm_blk:-vda}
[ -e "/sys/block/$dev" ] || fail "no /sys/block/$dev"
driver_of "/sys/block/$dev/device"
[ "$drv" = virtio_blk ] || fail "$dev driver is $drv, not virtio_blk"
note "$dev driver=$drv"
sed -n '/virtio/s/^ */linux-guest: irq /p' /proc/interrupts

pattern_roundtrip "$dev"

if command -v blkdiscard >/dev/null; then
	read -r dmax <"/sys/block/$dev/queue/discard_max_bytes"
	if [ "$dmax" = 0 ]; then
		note "blkdiscard-unsupported $dev discard_max_bytes=0"
	elif [ "$_sectors" -lt 256 ]; then
		note "blkdiscard-skipped $dev too small"
	elif blkdiscard -o 65536 -l 65536 "/dev/$dev"; then
		note "blkdiscard ok offset=65536 length=65536"
	else
		fail "blkdiscard -o 65536 -l 65536 /dev/$dev failed"
	fi
else
	note "blkdiscard-missing"
fi
[ -n "${tsvmm_dio:-}" ] && big_dio "$dev"
[ -n "${tsvmm_fs:-}" ] && fs_workload "$tsvmm_fs"
[ -n "${tsvmm_full:-}" ] && full_disk "$tsvmm_full"
[ -n "${tsvmm_drill:-}" ] && drill_io "$dev"
sync
pass "dev=$dev"
