# Smoke test: the kernel booted and /init runs.
read -r rel </proc/sys/kernel/osrelease
echo "linux-guest: uname -r: $rel"
echo "linux-guest: processors: $(grep -c ^processor /proc/cpuinfo)"
pass "release=$rel"
