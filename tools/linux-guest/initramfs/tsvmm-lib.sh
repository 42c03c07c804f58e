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
