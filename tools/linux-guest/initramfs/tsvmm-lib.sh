# Helpers sourced by /init (in a subshell) before each /tests/NAME.sh.
# $T is the test name.  Verdicts end the test's subshell.

pass() {
	echo "linux-guest: PASS test=$T${1:+ $*}"
	exit 100
}

fail() {
	echo "linux-guest: FAIL test=$T reason=$*"
	exit 101
}

note() {
	echo "linux-guest: note $*"
}

# Sets $drv to the name of the driver bound to sysfs device dir $1 ("none"
# if unbound).  No fork: `cd -P` resolves the link instead of readlink, and
# the result comes back in a variable rather than through $(...).
driver_of() {
	drv=none
	if [ -d "$1/driver" ] && cd -P "$1/driver" 2>/dev/null; then
		drv=${PWD##*/}
	fi
	cd /
}

# Write /pattern (64 KiB, byte i = (i + (i >> 8) * 37 + 0x5a) & 0xff) to the
# first 64 KiB of /dev/$1 with O_DIRECT, read it back with O_DIRECT, compare.
pattern_roundtrip() {
	_dev=/dev/$1
	[ -b "$_dev" ] || fail "$_dev is not a block device"
	read -r _sectors <"/sys/block/$1/size"
	[ "$_sectors" -ge 128 ] || fail "$_dev too small ($_sectors sectors, need 128)"
	note "$1 sectors=$_sectors"
	dd if=/pattern of="$_dev" bs=4096 count=16 oflag=direct 2>/tmp/dd.err \
		|| fail "dd write to $_dev failed: $(cat /tmp/dd.err)"
	dd if="$_dev" of=/tmp/readback bs=4096 count=16 iflag=direct 2>/tmp/dd.err \
		|| fail "dd read from $_dev failed: $(cat /tmp/dd.err)"
	cmp /pattern /tmp/readback || fail "readback of $_dev differs from /pattern"
	note "$1 pattern-roundtrip ok bytes=65536"
}

# Large O_DIRECT requests from scattered pages (/bin/tsvmm-io dio): 1 MiB at
# disk offset 1 MiB (pattern seed 1), 4 MiB at 4 MiB (seed 4), each written,
# read back and compared; the disk must be at least 8 MiB.  Prints the queue
# limits and, per request, "linux-guest: dio write|read ..." lines (see
# src/tsvmm-io.c); the data stays on the disk for the host to check.
big_dio() {
	_q=/sys/block/$1/queue
	read -r _ms <"$_q/max_segments"
	read -r _mskb <"$_q/max_sectors_kb"
	read -r _mhkb <"$_q/max_hw_sectors_kb"
	note "$1 queue max_segments=$_ms max_sectors_kb=$_mskb max_hw_sectors_kb=$_mhkb"
	tsvmm-io dio "$1" 1048576 1048576 1 || fail "1 MiB O_DIRECT round trip on /dev/$1"
	tsvmm-io dio "$1" 4194304 4194304 4 || fail "4 MiB O_DIRECT round trip on /dev/$1"
}

# A disk whose host file lives on a file system with less room than the disk
# (tsvmm.full=DEV; apps/vmm/e2e-linux puts it on a small tmpfs): 64 KiB O_DIRECT
# writes of /pattern from offset 0, one after another, until one fails (one
# must); then every block the device said it wrote is read back and compared.
#   linux-guest: note full-disk dev=DEV written=N error=DD'S MESSAGE
full_disk() {
	_dev=/dev/$1
	[ -b "$_dev" ] || fail "$_dev is not a block device"
	read -r _sectors <"/sys/block/$1/size"
	_max=$((_sectors / 128))
	_n=0
	while [ "$_n" -lt "$_max" ]; do
		dd if=/pattern of="$_dev" bs=65536 count=1 seek=$_n oflag=direct 2>/tmp/dd.err || break
		_n=$((_n + 1))
	done
	[ "$_n" -lt "$_max" ] || fail "full-disk: all $_max blocks of $_dev written: the host file system was not full"
	_err=$(tr '\n' ' ' </tmp/dd.err)
	_i=0
	while [ "$_i" -lt "$_n" ]; do
		dd if="$_dev" of=/tmp/readback bs=65536 count=1 skip=$_i iflag=direct 2>/tmp/dd.err \
			|| fail "full-disk: read-back of block $_i of $_dev: $(cat /tmp/dd.err)"
		cmp /pattern /tmp/readback >/dev/null || fail "full-disk: block $_i of $_dev differs from /pattern"
		_i=$((_i + 1))
	done
	note "full-disk dev=$1 written=$_n error=$_err"
}

# ext2 workload on the whole of /dev/$1: mke2fs (4 KiB blocks), mount, three
# pattern files (/small 5000 bytes seed 11, /dir/medium 300000 seed 12, /big
# 3 MiB seed 13; see src/tsvmm-io.c), sync, umount; then mount read-only,
# check the files (read from the disk: the page cache went with the umount),
# umount.  The host runs e2fsck -fn on the image afterwards.
fs_workload() {
	_dev=/dev/$1
	[ -b "$_dev" ] || fail "$_dev is not a block device"
	mke2fs -F -b 4096 -L tsvmm "$_dev" >/tmp/mke2fs.out 2>&1 || fail "mke2fs $_dev failed: $(cat /tmp/mke2fs.out)"
	mount -t ext2 "$_dev" /mnt || fail "mount -t ext2 $_dev failed"
	mkdir /mnt/dir || fail "mkdir on ext2 failed"
	tsvmm-io fill /mnt/small 5000 11 && tsvmm-io fill /mnt/dir/medium 300000 12 \
		&& tsvmm-io fill /mnt/big 3145728 13 || fail "writing files on ext2 failed"
	sync
	umount /mnt || fail "umount $_dev failed"
	mount -t ext2 -o ro "$_dev" /mnt || fail "mount -o ro $_dev failed"
	tsvmm-io check /mnt/small 5000 11 && tsvmm-io check /mnt/dir/medium 300000 12 \
		&& tsvmm-io check /mnt/big 3145728 13 || fail "files on ext2 differ after remount"
	umount /mnt || fail "umount $_dev (ro) failed"
	note "ext2 ok dev=$1 files=3 bytes=3450728"
}

# The monitor drills of apps/vmm/e2e-linux (tsvmm.drill=1), on /dev/$1:
#   linux-guest: drill idle seconds=S    no I/O for S seconds (tsvmm.idle, default 5): the
#                                        host checks the stall detector stays quiet
#   linux-guest: drill io start dev=DEV  then one O_DIRECT request at a time, so a lost kick or
#                                        interrupt hangs it: round i writes 4 KiB block i % 16 of
#                                        /pattern to disk block 768 + i % 16 (3 MiB on) and reads
#                                        sector 6272 (3 MiB + 64 KiB); once that sector starts
#                                        with the line DRILL-STOP (the host writes it into the
#                                        image) and 16 rounds ran, the 64 KiB are read back and
#                                        compared with /pattern
#   linux-guest: drill io done dev=DEV rounds=N
drill_io() {
	_dev=/dev/$1
	_idle=${tsvmm_idle:-5}
	echo "linux-guest: drill idle seconds=$_idle"
	sleep "$_idle"
	echo "linux-guest: drill io start dev=$1"
	_i=0
	while :; do
		dd if=/pattern of="$_dev" bs=4096 count=1 skip=$((_i % 16)) seek=$((768 + _i % 16)) oflag=direct 2>/tmp/dd.err \
			|| fail "drill: write round $_i on $_dev: $(cat /tmp/dd.err)"
		dd if="$_dev" of=/tmp/drill-mark bs=512 count=1 skip=6272 iflag=direct 2>/tmp/dd.err \
			|| fail "drill: read round $_i on $_dev: $(cat /tmp/dd.err)"
		_i=$((_i + 1))
		_m=
		read -r _m </tmp/drill-mark
		[ "$_m" = DRILL-STOP ] && [ "$_i" -ge 16 ] && break
		[ "$_i" -ge 3000 ] && fail "drill: no DRILL-STOP from the host after $_i rounds"
	done
	dd if="$_dev" of=/tmp/readback bs=4096 count=16 skip=768 iflag=direct 2>/tmp/dd.err \
		|| fail "drill: read-back on $_dev: $(cat /tmp/dd.err)"
	cmp /pattern /tmp/readback >/dev/null || fail "drill: the 64 KiB written during the drill differ from /pattern"
	echo "linux-guest: drill io done dev=$1 rounds=$_i"
}
