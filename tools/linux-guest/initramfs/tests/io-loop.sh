# Continuous O_DIRECT I/O for the monitor test (stop/cont under load):
# write /pattern to ROUNDS successive 64 KiB slots of /dev/DEV, then read every
# slot back and compare.  Lines: io-loop start / io-loop written / PASS.
dev=${tsvmm_dev:-vda}
n=${tsvmm_rounds:-24}
[ -b "/dev/$dev" ] || fail "/dev/$dev is not a block device"
echo "linux-guest: io-loop start dev=$dev rounds=$n"
i=0
while [ $i -lt "$n" ]; do
	dd if=/pattern of="/dev/$dev" bs=4096 count=16 seek=$((i * 16)) oflag=direct 2>/tmp/dd.err || fail "write slot $i: $(cat /tmp/dd.err)"
	i=$((i + 1))
done
echo "linux-guest: io-loop written rounds=$n"
i=0
while [ $i -lt "$n" ]; do
	dd if="/dev/$dev" of=/tmp/readback bs=4096 count=16 skip=$((i * 16)) iflag=direct 2>/tmp/dd.err || fail "read slot $i: $(cat /tmp/dd.err)"
	cmp /pattern /tmp/readback >/dev/null || fail "slot $i differs from /pattern"
	i=$((i + 1))
done
pass "rounds=$n"
