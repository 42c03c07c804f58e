# The demo (scripts/demo-linux.js, npm run demo): show the devices, write a
# file on the ext2 disk the host made, ping the host, then wait for the host's
# monitor to end the VM.
# Parameters: [tsvmm.disk=vda] [tsvmm.ip=ADDR/PREFIX tsvmm.peer=ADDR]
#   [tsvmm.hold=SECONDS]: after "linux-guest: demo done" wait up to SECONDS
#   (default 120) for the host to end the VM, then pass (and reboot).
disk=${tsvmm_disk:-vda}
read -r release </proc/sys/kernel/osrelease
echo "linux-guest: demo Linux $release is up; its devices:"
for d in /sys/bus/pci/devices/*; do
	[ -e "$d/vendor" ] || continue
	read -r v <"$d/vendor"
	read -r dv <"$d/device"
	driver_of "$d"
	echo "linux-guest: demo   pci ${d##*/} vendor=$v device=$dv driver=$drv"
done
for b in /sys/block/*; do
	[ -e "$b/device" ] || continue
	driver_of "$b/device"
	read -r s <"$b/size"
	echo "linux-guest: demo   disk /dev/${b##*/} $((s / 2048)) MiB driver=$drv"
done
for n in /sys/class/net/*; do
	[ -e "$n/device" ] || continue
	driver_of "$n/device"
	read -r mac <"$n/address"
	echo "linux-guest: demo   nic ${n##*/} mac=$mac driver=$drv"
done

[ -b "/dev/$disk" ] || fail "no /dev/$disk"
mount -t ext2 "/dev/$disk" /mnt || fail "mount -t ext2 /dev/$disk failed"
echo "Hello from Linux $release on tsvmm (virtio-blk $disk)" >/mnt/hello.txt || fail "writing /mnt/hello.txt failed"
echo "linux-guest: demo wrote /hello.txt on /dev/$disk (ext2):"
while read -r l; do echo "linux-guest: demo   $l"; done </mnt/hello.txt
umount /mnt || fail "umount /dev/$disk failed"
sync

if [ -n "$tsvmm_ip" ] && [ -n "$tsvmm_peer" ]; then
	ip link set eth0 up && ip addr add "$tsvmm_ip" dev eth0 || fail "configuring eth0 failed"
	echo "linux-guest: demo eth0 is $tsvmm_ip; ping $tsvmm_peer (the host):"
	ping -c 3 -W 2 "$tsvmm_peer" || fail "ping $tsvmm_peer got no reply"
else
	echo "linux-guest: demo no network (no tsvmm.ip/tsvmm.peer)"
fi

hold=${tsvmm_hold:-120}
echo "linux-guest: demo done; waiting up to ${hold}s for the host to end the VM"
waited=0
while [ "$waited" -lt "$hold" ]; do
	sleep 1
	waited=$((waited + 1))
done
pass "disk=$disk"
