# virtio-scsi + sd: disk present, O_DIRECT pattern round trip.
dev=${tsvmm_scsi:-sda}
[ -e "/sys/block/$dev" ] || fail "no /sys/block/$dev"
driver_of "/sys/block/$dev/device"
[ "$drv" = sd ] || fail "$dev driver is $drv, not sd"
note "$dev driver=$drv"
sed -n '/virtio/s/^ */linux-guest: irq /p' /proc/interrupts
pattern_roundtrip "$dev"
sync
pass "dev=$dev"
