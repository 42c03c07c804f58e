# virtio-scsi + sd: every disk's size, vendor, model, serial (VPD 0x80) and
# write protection, then an O_DIRECT pattern round trip on the first one.
# tsvmm.dio=1, tsvmm.fs=DEV and tsvmm.drill=1 as in virtio-blk.sh (big_dio and drill_io on the first disk).
# Per disk:  linux-guest: scsi-disk dev=sdX hctl=H:C:T:L sectors=N ro=0|1 vendor='V' model='M' serial='S'
dev=${tsvmm_scsi:-sda}
[ -e "/sys/block/$dev" ] || fail "no /sys/block/$dev"
driver_of "/sys/block/$dev/device"
[ "$drv" = sd ] || fail "$dev driver is $drv, not sd"
note "$dev driver=$drv"
for d in /sys/block/sd*; do
	n=${d##*/}
	read -r sectors <"$d/size"
	read -r ro <"$d/ro"
	read -r vendor <"$d/device/vendor"
	read -r model <"$d/device/model"
	# vpd_pg80 is the raw page: a 4-byte header, then the serial.  (busybox
	# tr -cd '[:graph:]' deletes everything, so skip the header with dd.)
	serial=$(dd if="$d/device/vpd_pg80" bs=1 skip=4 2>/dev/null)
	cd -P "$d/device" && hctl=${PWD##*/}
	cd /
	echo "linux-guest: scsi-disk dev=$n hctl=$hctl sectors=$sectors ro=$ro vendor='$vendor' model='$model' serial='$serial'"
done
sed -n '/virtio/s/^ */linux-guest: irq /p' /proc/interrupts
pattern_roundtrip "$dev"
[ -n "${tsvmm_dio:-}" ] && big_dio "$dev"
[ -n "${tsvmm_fs:-}" ] && fs_workload "$tsvmm_fs"
[ -n "${tsvmm_drill:-}" ] && drill_io "$dev"
sync
pass "dev=$dev"
